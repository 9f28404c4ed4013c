package app

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/projector"
)

// env returns the environment variable CARDMETER_<NAME> or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv("CARDMETER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); ok {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(env(name, strconv.Itoa(def))); err == nil {
		return n
	}
	return def
}

func envDur(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(env(name, def.String())); err == nil {
		return d
	}
	return def
}

func envBool(name string, def bool) bool {
	if b, err := strconv.ParseBool(env(name, strconv.FormatBool(def))); err == nil {
		return b
	}
	return def
}

// BindFlags registers the configuration flags on fs. Every flag's default
// comes from the environment variable CARDMETER_<FLAG> (dashes as
// underscores), else from the built-in default.
func BindFlags(fs *flag.FlagSet, cfg *Config, logLevel *string) {
	fs.StringVar(&cfg.DataDir, "data-dir", env("data-dir", ".data"), "folder for the embedded JetStream's files and the projector's record-id index")
	fs.StringVar(&cfg.NATSURL, "nats-url", env("nats-url", ""), "external NATS URL; empty starts an embedded JetStream server")
	cfg.NATS.User, cfg.NATS.Password = env("nats-user", ""), env("nats-password", "")
	cfg.NATS.AdminPassword, cfg.NATS.SubscriberPassword = env("nats-admin-password", ""), env("nats-subscriber-password", "")
	fs.StringVar(&cfg.NATS.CAFile, "nats-ca", env("nats-ca", ""), "external NATS over TLS (a tls:// URL): the CA that signed the server's certificate (default: the system's)")
	fs.StringVar(&cfg.NATS.CredsFile, "nats-creds", env("nats-creds", ""), "external NATS: a credentials file (else CARDMETER_NATS_USER and CARDMETER_NATS_PASSWORD)")
	fs.Func("nats-subscriber-consumers", "embedded NATS: the durable consumers on EVENTS the subscriber user may use, comma-separated (default subscriber; the user exists when CARDMETER_NATS_SUBSCRIBER_PASSWORD is set)", func(v string) error {
		cfg.NATS.SubscriberConsumers = strings.Split(v, ",")
		return nil
	})
	if v := env("nats-subscriber-consumers", ""); v != "" {
		cfg.NATS.SubscriberConsumers = strings.Split(v, ",")
	}
	fs.BoolVar(&cfg.WaitForTopology, "wait-for-topology", env("wait-for-topology", "false") == "true", "on an external NATS, wait for the streams and buckets instead of creating them at start (for a NATS user with least privilege; `cardmeter setup` makes them as the NATS admin)")
	fs.IntVar(&cfg.NATSPort, "nats-port", envInt("nats-port", 4222), "the embedded server's client port (-1: any free port)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", env("http-addr", "127.0.0.1:8080"), "the API's listen address")
	fs.StringVar(&cfg.HealthAddr, "health-addr", env("health-addr", ""), "without the API: listen address of /healthz, /readyz and /metrics")
	fs.IntVar(&cfg.Partitions, "partitions", envInt("partitions", 0), "partitions of a new log (default 8 with one replica, 32 with more); an existing log's count is written in it and read from there (a different value is refused)")
	clockMode := env("clock", "real")
	fs.Func("clock", "real (ticks on the wall clock) or manual (time set by PUT /v1/clock); default "+clockMode, func(s string) error {
		if s != "real" && s != "manual" {
			return fmt.Errorf("want real or manual")
		}
		clockMode = s
		return nil
	})
	fs.Func("clock-start", "RFC 3339 time a manual clock starts at on an empty log (default: now)", func(s string) error {
		t, err := time.Parse(time.RFC3339, s)
		cfg.ClockStart = t
		return err
	})
	fs.DurationVar(&cfg.TickInterval, "tick-interval", envDur("tick-interval", time.Minute), "real clock tick interval")
	fs.StringVar(&cfg.ClickHouse.Addr, "clickhouse-addr", env("clickhouse-addr", "127.0.0.1:19000"), "ClickHouse native protocol address; the replicas of a cluster comma-separated (the first that answers is used)")
	fs.StringVar(&cfg.ClickHouse.Cluster, "clickhouse-cluster", env("clickhouse-cluster", ""), "ClickHouse cluster whose replicas hold the tables: created ON CLUSTER as Replicated*MergeTree (needs ZooKeeper and the {shard} and {replica} macros); empty: one server")
	fs.StringVar(&cfg.ClickHouse.Database, "clickhouse-db", env("clickhouse-db", "cardmeter"), "ClickHouse database")
	fs.StringVar(&cfg.ClickHouse.User, "clickhouse-user", env("clickhouse-user", "default"), "ClickHouse user")
	fs.StringVar(&cfg.ClickHouse.Password, "clickhouse-password", env("clickhouse-password", ""), "ClickHouse password")
	fs.StringVar(&cfg.AnalystUser, "clickhouse-analyst-user", env("clickhouse-analyst-user", "analyst"), "the read-only ClickHouse user the API reads the console's charts as (\"\": none)")
	fs.StringVar(&cfg.AnalystPassword, "clickhouse-analyst-password", env("clickhouse-analyst-password", "analyst"), "its password")
	fs.IntVar(&cfg.GCPercent, "gc-percent", envInt("gc-percent", DefaultGCPercent), "garbage collection target: the heap grows by this percent of live memory between collections (GOGC, when set, wins)")
	fs.IntVar(&cfg.MemoryLimitMiB, "memory-limit-mib", envInt("memory-limit-mib", 0), "soft memory limit in MiB: the collector works harder near it; 0: half the machine's (or cgroup's) memory; -1: none (GOMEMLIMIT, when set, wins)")
	fs.IntVar(&cfg.Sink.BatchRows, "sink-batch-rows", envInt("sink-batch-rows", 200000), "rows per ClickHouse insert at most")
	fs.DurationVar(&cfg.Sink.FlushInterval, "sink-flush-interval", envDur("sink-flush-interval", time.Second), "longest wait before a partial block is inserted")
	fs.DurationVar(&cfg.Notifier.Timeout, "webhook-timeout", envDur("webhook-timeout", 10*time.Second), "how long a webhook endpoint has to answer 2xx")
	fs.DurationVar(&cfg.Notifier.RetryFor, "webhook-retry-for", envDur("webhook-retry-for", 24*time.Hour), "how long an event is retried from its first attempt before it goes to the dead letters")
	fs.DurationVar(&cfg.Notifier.DisableAfter, "webhook-disable-after", envDur("webhook-disable-after", 72*time.Hour), "a webhook whose endpoint failed every attempt for this long is disabled")
	fs.BoolVar(&cfg.Notifier.AllowPrivate, "webhook-allow-private", envBool("webhook-allow-private", false), "let webhooks reach loopback, link-local and private addresses (refused by default, checked at every connection)")
	fs.StringVar(&cfg.ActuatorConfig, "actuator-config", env("actuator-config", ""), "the carriers' provisioning APIs (a JSON file, see README): with it the all-in-one also stops, resumes and cancels cards at their carrier")
	fs.DurationVar(&cfg.Actuator.ReconcileEvery, "reconcile-every", envDur("reconcile-every", 0), "reconcile every carrier whose driver lists its cards this often, mending the drift (0: only by `cardmeter reconcile`)")
	fs.DurationVar(&cfg.Actuator.RetryFor, "actuator-retry-for", envDur("actuator-retry-for", time.Hour), "how long a carrier call is retried before the action is reported failed")
	fs.DurationVar(&cfg.Projector.CheckpointInterval, "checkpoint-interval", envDur("checkpoint-interval", projector.DefaultCheckpointInterval), "longest time between projector checkpoints while it folds")
	fs.IntVar(&cfg.Projector.CheckpointEvery, "checkpoint-every", envInt("checkpoint-every", 50000), "projector checkpoint after this many folded log messages")
	fs.DurationVar(&cfg.StartTimeout, "start-timeout", envDur("start-timeout", 5*time.Minute), "how long start-up waits for NATS and its streams before it exits non-zero")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", envDur("lease-ttl", 0), fmt.Sprintf("where this process sets the streams up (embedded NATS, or without --wait-for-topology): how long a partition's lease outlives its owner's last renewal; 0: as the leases bucket has it (%s for a new one)", broker.DefaultTopology.LeaseTTL))
	fs.IntVar(&cfg.Replicas, "replicas", envInt("replicas", 0), "where this process sets the streams up (without --wait-for-topology): copies of each stream and bucket, existing ones updated to it (3 on a cluster); 0: as the log has them, 1 for a new log")
	fs.StringVar(&cfg.Projector.Owner, "instance", env("instance", ""), "this process among the running instances of its roles, for partition leases: unique among them and the same across restarts (default: the projector's host and absolute data folder; the sink's host and process id)")
	fs.IntVar(&cfg.Projector.RestoreConcurrency, "restore-concurrency", envInt("restore-concurrency", 4), "partitions restoring their checkpoint at once")
	fs.StringVar(&cfg.TokensFile, "tokens-file", env("tokens-file", ""), "bearer tokens, one per line: <name> <token> <scope>[,<scope>...]")
	cfg.Tokens = env("tokens", "") // inline tokens, ';' between lines; never a flag (it would show in ps)
	fs.Int64Var(&cfg.API.Batch.MaxBodyBytes, "max-body-bytes", int64(envInt("max-body-bytes", int(api.DefaultBatchLimits.MaxBodyBytes))), "largest usage batch body")
	fs.Int64Var(&cfg.API.Batch.MaxDecompressedBytes, "max-decompressed-bytes", int64(envInt("max-decompressed-bytes", int(api.DefaultBatchLimits.MaxDecompressedBytes))), "largest gzip batch once inflated")
	fs.IntVar(&cfg.API.Batch.MaxRecords, "max-records", envInt("max-records", api.DefaultBatchLimits.MaxRecords), "most records in one batch")
	fs.Int64Var(&cfg.API.Batch.InFlightBytes, "ingest-memory", int64(envInt("ingest-memory", int(api.DefaultBatchLimits.InFlightBytes))), "memory all usage batches in flight may hold together; past it a batch is answered 503 with Retry-After (at least twice --max-body-bytes)")
	fs.IntVar(&cfg.API.Batch.MaxLineBytes, "max-line-bytes", envInt("max-line-bytes", api.DefaultBatchLimits.MaxLineBytes), "longest line (or JSON array element)")
	fs.DurationVar(&cfg.API.VerdictWait, "usage-verdict-wait", envDur("usage-verdict-wait", 2*time.Second), "how long a usage batch's answer waits for the projector's verdicts (past it they are \"pending\"; ?wait=false: no wait)")
	fs.DurationVar(&cfg.API.Limits.MaxFutureSkew, "max-future-skew", envDur("max-future-skew", cdr.DefaultLimits.MaxFutureSkew), "how far past its receive time a record may end")
	cfg.API.Limits.MaxBytes, cfg.API.Limits.MaxFieldLen = cdr.DefaultLimits.MaxBytes, cdr.DefaultLimits.MaxFieldLen
	fs.DurationVar(&cfg.ReadHeaderTimeout, "http-header-timeout", envDur("http-header-timeout", 10*time.Second), "time a client has to send its request headers")
	fs.DurationVar(&cfg.ReadTimeout, "http-read-timeout", envDur("http-read-timeout", 2*time.Minute), "time a client has to send a whole request")
	*logLevel = env("log-level", "info")
	fs.StringVar(logLevel, "log-level", *logLevel, "debug, info, warn or error")
	cfg.finishFlags = func() { cfg.ManualClock = clockMode == "manual" }
}

// Finish applies what BindFlags could only know after parsing.
func (c *Config) Finish() {
	if c.finishFlags != nil {
		c.finishFlags()
	}
}

// DefaultGCPercent is the collector's target for the services. Their heap
// is mostly long-lived state (cards, the directory) while the hot path
// allocates short-lived buffers at a high rate: the collector's work is
// proportional to the bytes allocated divided by the target, so 400
// instead of Go's 100 cut the pipeline's CPU per record by about a fifth
// in the benchmark. The heap may then grow to five times the live one, so
// a soft memory limit goes with it (see TuneGC).
const DefaultGCPercent = 400

// TuneGC sets the garbage collector's target and soft memory limit, each
// unless GOGC or GOMEMLIMIT is set in the environment. A limit of 0 MiB
// means half the memory of the machine (or of its cgroup); below 0, none.
// Near the limit the collector runs more often, whatever the target.
func TuneGC(percent, limitMiB int, log *zap.Logger) {
	if v, ok := os.LookupEnv("GOGC"); ok {
		log.Info("garbage collection target from GOGC", zap.String("GOGC", v))
	} else if percent > 0 {
		debug.SetGCPercent(percent)
		log.Info("garbage collection target", zap.Int("percent", percent))
	}
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		log.Info("memory limit from GOMEMLIMIT", zap.String("GOMEMLIMIT", v))
		return
	}
	limit := int64(limitMiB) << 20
	if limitMiB == 0 {
		limit = machineMemory() / 2
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("soft memory limit", zap.Int64("mib", limit>>20))
	}
}

// machineMemory is the memory this process may use: the smallest of its
// cgroup's limit (else the machine's total) and its data limit (ulimit -d,
// which counts the memory the process writes to, not what it reserves);
// 0 when unknown.
func machineMemory() int64 {
	n := hostMemory()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_DATA, &rl); err == nil && rl.Cur != ^uint64(0) && rl.Cur < 1<<62 {
		if n == 0 || int64(rl.Cur) < n {
			n = int64(rl.Cur)
		}
	}
	return n
}

func hostMemory() int64 {
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// NewLogger returns a JSON zap logger at the level named.
func NewLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return zc.Build()
}

// Main is the body of every service binary: parse flags, start the roles,
// wait for SIGINT or SIGTERM, stop in order. It returns the exit code.
func Main(name string, roles []string, args []string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var cfg Config
	var level string
	BindFlags(fs, &cfg, &level)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.Notifier.RetryFor > broker.RetriesTTL {
		// past it the first attempt is forgotten and the window starts again
		fmt.Fprintf(os.Stderr, "%s: --webhook-retry-for %s is longer than the retries bucket keeps a first attempt (%s)\n", name, cfg.Notifier.RetryFor, broker.RetriesTTL)
		return 2
	}
	cfg.Finish()
	cfg.Roles = roles
	log, err := NewLogger(level)
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		return 2
	}
	defer log.Sync() //nolint:errcheck // best effort at exit
	TuneGC(cfg.GCPercent, cfg.MemoryLimitMiB, log)
	// SIGHUP reloads the tokens file when there is one (watchTokens);
	// without one it must not end the process
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := Start(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", zap.Error(err))
		return 1
	}
	if p.URL != "" {
		fmt.Fprintf(os.Stderr, "\ncardmeter %s: API at %s (clock: %s; NATS: %s)\n\n", name, p.URL,
			map[bool]string{true: "manual", false: "real"}[cfg.ManualClock], p.NC.ConnectedUrl())
	}
	<-ctx.Done()
	log.Info("shutting down")
	p.Stop()
	if err := p.Err(); err != nil {
		log.Error("stopped with error", zap.Error(err))
		return 1
	}
	return 0
}
