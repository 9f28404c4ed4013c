// Package app composes cardmeter's services (ingest API, projector, clock,
// sink, notifier, and the actuator when carriers are configured) into one
// process: the all-in-one for `make run`, small deployments
// and tests. Each separate service binary runs a subset of the same roles.
package app

import (
	"context"
	"errors"
	"fmt"
	"github.com/cardmeter/cardmeter/pkg/status"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/actuate"
	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/clock"
	"github.com/cardmeter/cardmeter/pkg/projector"
	"github.com/cardmeter/cardmeter/pkg/sim"
	"github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// Roles a process can run.
const (
	RoleAPI       = "api"
	RoleProjector = "projector"
	RoleClock     = "clock"
	RoleSink      = "sink"
	RoleNotifier  = "notifier"
	// RoleActuator acts on the carriers; the all-in-one runs it when
	// --actuator-config names the carriers' drivers.
	RoleActuator = "actuator"
)

// AllRoles is the all-in-one.
var AllRoles = []string{RoleAPI, RoleProjector, RoleClock, RoleSink, RoleNotifier, RoleActuator}

// Config configures a process.
type Config struct {
	Roles    []string
	DataDir  string // embedded JetStream keeps its files under DataDir/jetstream
	NATSURL  string // empty: start the embedded JetStream server
	NATSPort int    // the embedded server's port: 0 picks a free one
	NATS     NATSAuth
	// WaitForTopology makes a role on an external NATS wait for the
	// streams and buckets rather than create or update them at start, for
	// a NATS user with least privilege: `cardmeter setup` (as the NATS
	// admin) makes them. The embedded server's process always makes them.
	WaitForTopology bool
	HTTPAddr        string        // the API's listen address
	HealthAddr      string        // without the API role: where /healthz, /readyz and /metrics listen ("" for none)
	StatusEvery     time.Duration // how often the roles report to the status bucket (default status.Every)
	// AnalystUser, when set, is the read-only ClickHouse user (at
	// ClickHouse.Addr) the API reads the console's charts as.
	AnalystUser, AnalystPassword string
	Partitions                   int
	LeaseTTL                     time.Duration // partition leases' time to live, where this process sets the topology up
	Replicas                     int           // copies of each stream, where this process sets the topology up; 0: as the log has them
	ManualClock                  bool
	ClockStart                   time.Time // where a manual clock starts on an empty log; zero: now
	TickInterval                 time.Duration
	ClickHouse                   sink.ClickHouseConfig
	Sink                         sink.Config
	Notifier                     webhook.Config
	ActuatorConfig               string // the carriers' drivers (pkg/actuate); the actuator runs when set
	Actuator                     actuate.ActuatorConfig
	Projector                    projector.Config
	API                          api.Config // partitions are set from Partitions
	// TokensFile and Tokens (inline, ';' between lines) configure bearer
	// tokens; with neither, the API runs open and only on loopback.
	TokensFile string
	Tokens     string
	// HTTP timeouts against slow clients.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// GCPercent is the garbage collector's target (Main applies it to the
	// process); see DefaultGCPercent.
	GCPercent      int
	MemoryLimitMiB int // soft memory limit; 0: half the machine's memory
	// StartTimeout bounds how long start-up waits for NATS and its streams
	// and buckets; 0: as long as ctx allows.
	StartTimeout time.Duration

	finishFlags func()
}

var consumerName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// NATSAuth is who the process is to NATS, and who else the embedded
// server lets in. Secrets come from the environment or files, never from
// flags (a flag shows in the process list) and never reach the logs.
type NATSAuth struct {
	// An external server: a user and password (CARDMETER_NATS_USER,
	// CARDMETER_NATS_PASSWORD) or a credentials file (--nats-creds).
	User, Password, CredsFile string
	// CAFile verifies the server of a tls:// URL (else the system's roots).
	CAFile string
	// The embedded server: the process's own roles connect in-process
	// with a password made at each start. AdminPassword
	// (CARDMETER_NATS_ADMIN_PASSWORD) adds the user "admin" for tools
	// (rebuild, the nats CLI); SubscriberPassword
	// (CARDMETER_NATS_SUBSCRIBER_PASSWORD) the user "subscriber" for
	// downstream services: the emitted events only, through the durable
	// consumers named in SubscriberConsumers. Nobody else gets in.
	AdminPassword, SubscriberPassword string
	SubscriberConsumers               []string
}

// Pipeline is a running process. Stop it with Stop.
type Pipeline struct {
	cfg      Config
	log      *zap.Logger
	embedded *server.Server
	NC       *nats.Conn
	JS       jetstream.JetStream
	// URL is the API's base URL when the API role runs.
	URL string
	// Clock is set when the API or clock role runs.
	Clock     *clock.Clock
	runsClock bool // the clock role (the API has a Clock to read)
	// Projector is set when the projector role runs.
	Projector *projector.Projector
	// Sink is set when the sink role runs.
	Sink *sink.Sink
	// Notifier is set when the notifier role runs.
	Notifier *webhook.Notifier
	// Actuator is set when the actuator runs.
	Actuator *actuate.Actuator
	// HealthURL is where a process without the API serves /healthz,
	// /readyz and /metrics (--health-addr).
	HealthURL string
	// Metrics gathers what /metrics serves.
	Metrics prometheus.Gatherer

	httpSrv *http.Server
	api     *api.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errMu   sync.Mutex
	err     error
	stopped chan struct{}
}

func has(roles []string, r string) bool {
	for _, x := range roles {
		if x == r {
			return true
		}
	}
	return false
}

// Partitions is the log's partition count.
func (p *Pipeline) Partitions() int { return p.cfg.Partitions }

// attemptTimeout bounds one attempt of a start-up step.
const attemptTimeout = 30 * time.Second

// Start starts the configured roles and returns once they run.
func Start(ctx context.Context, cfg Config, log *zap.Logger) (_ *Pipeline, err error) {
	if len(cfg.Roles) == 0 {
		cfg.Roles = AllRoles
	}
	p := &Pipeline{cfg: cfg, log: log, stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			p.Stop()
		}
	}()
	url := cfg.NATSURL
	if url == "" {
		port := cfg.NATSPort
		if port == 0 {
			port = -1
		}
		if len(cfg.NATS.SubscriberConsumers) == 0 {
			cfg.NATS.SubscriberConsumers = []string{"subscriber"}
		}
		for _, c := range cfg.NATS.SubscriberConsumers {
			if !consumerName.MatchString(c) {
				return nil, fmt.Errorf("nats: subscriber consumer %q: a name is letters, digits, '_' and '-'", c)
			}
		}
		own := broker.NewPassword()
		users := []broker.User{{Name: broker.UserProcess, Password: own}}
		if a := cfg.NATS.AdminPassword; a != "" {
			users = append(users, broker.User{Name: broker.UserAdmin, Password: a})
		}
		if sp := cfg.NATS.SubscriberPassword; sp != "" {
			users = append(users, broker.User{Name: broker.UserSubscriber, Password: sp, Permissions: broker.SubscriberPermissions(cfg.NATS.SubscriberConsumers)})
		}
		p.embedded, err = broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Port: port, Users: users}, log)
		if err != nil {
			return nil, err
		}
		url = p.embedded.ClientURL()
		cfg.NATS.User, cfg.NATS.Password, cfg.NATS.CredsFile = broker.UserProcess, own, ""
		names := make([]string, 0, len(users))
		for _, u := range users {
			names = append(names, u.Name)
		}
		log.Info("embedded NATS requires a user", zap.Strings("users", names))
	}
	var natsOpts []nats.Option
	if cfg.NATS.CAFile != "" {
		natsOpts = append(natsOpts, nats.RootCAs(cfg.NATS.CAFile))
	}
	switch {
	case cfg.NATS.CredsFile != "":
		natsOpts = append(natsOpts, nats.UserCredentials(cfg.NATS.CredsFile))
	case cfg.NATS.User != "":
		natsOpts = append(natsOpts, nats.UserInfo(cfg.NATS.User, cfg.NATS.Password), nats.CustomInboxPrefix(broker.InboxPrefix(cfg.NATS.User)))
	}
	// Start-up waits for NATS, retrying with backoff for up to
	// StartTimeout (a server that starts after us, or a cluster electing
	// its leaders), then gives up with an error: the process exits
	// non-zero and its supervisor starts it again. It never runs without
	// the streams and buckets it needs.
	startCtx := ctx
	if cfg.StartTimeout > 0 {
		var cancel context.CancelFunc
		startCtx, cancel = context.WithTimeout(ctx, cfg.StartTimeout)
		defer cancel()
	}
	// each attempt has its own deadline: a JetStream request that no
	// server answers (a cluster without a meta leader yet) waits until its
	// context ends, and must not take the whole start-up with it
	retry := func(what string, op func(ctx context.Context) error) error {
		bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond),
			backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0)), startCtx)
		err := backoff.RetryNotify(func() error {
			actx, cancel := context.WithTimeout(startCtx, attemptTimeout)
			defer cancel()
			return op(actx)
		}, bo, func(err error, d time.Duration) {
			log.Warn("start-up: "+what+" failed; retrying", zap.Error(err), zap.Duration("in", d))
		})
		if err != nil {
			return fmt.Errorf("start-up: %s: %w", what, err)
		}
		return nil
	}
	if p.NC, err = broker.Connect(url, "cardmeter", log, natsOpts...); err != nil {
		return nil, err
	}
	if p.JS, err = jetstream.New(p.NC); err != nil {
		return nil, err
	}
	// the partition count is the log's (cfg.Partitions 0), or must equal it
	topo := broker.DefaultTopology
	topo.Partitions = cfg.Partitions
	if cfg.LeaseTTL > 0 {
		topo.LeaseTTL = cfg.LeaseTTL
	}
	topo.Replicas = cfg.Replicas
	if p.embedded != nil || !cfg.WaitForTopology {
		if err := retry("creating the streams and buckets", func(ctx context.Context) error {
			t, err := broker.Ensure(ctx, p.JS, topo)
			if errors.Is(err, broker.ErrTopology) {
				return backoff.Permanent(err)
			}
			topo = t
			return err
		}); err != nil {
			return nil, err
		}
	} else if err := retry("waiting for the streams and buckets", func(ctx context.Context) error {
		t, err := broker.Check(ctx, p.JS)
		if err != nil {
			return err
		}
		if _, err := broker.CheckPartitions(cfg.Partitions, t); err != nil {
			return backoff.Permanent(err)
		}
		topo = t
		return nil
	}); err != nil {
		return nil, err
	}
	cfg.Partitions = topo.Partitions
	cfg.Projector.Partitions = cfg.Partitions
	p.cfg = cfg

	runCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p.Metrics = reg

	if has(cfg.Roles, RoleProjector) {
		pc := cfg.Projector
		if pc.DataDir == "" {
			dataDir := cfg.DataDir
			if dataDir == "" {
				dataDir = ".data" // as the flag's default: never files among the sources
			}
			pc.DataDir = filepath.Join(dataDir, "projector")
		}
		pc.Registerer = reg
		p.Projector = projector.New(p.NC, p.JS, pc, log.Named("projector"))
		pr := p.Projector
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cardmeter_projector_lag_messages",
			Help: "Log messages the projector's partitions have not folded yet."}, func() float64 { return float64(pr.Lag()) }))
		p.goRun("projector", func() error { return p.Projector.Run(runCtx) })
		// the what-if simulations run where the log may be read
		p.goRun("simulator", func() error {
			return sim.Serve(runCtx, p.NC, p.JS, cfg.Partitions, p.instance(cfg), log.Named("simulator"))
		})
	}
	if has(cfg.Roles, RoleSink) {
		sc := cfg.Sink
		sc.Partitions = cfg.Partitions
		if sc.Instance == "" {
			sc.Instance = p.instance(cfg)
		}
		p.Sink = sink.New(p.JS, cfg.ClickHouse, sc, reg, log.Named("sink"))
		p.goRun("sink", func() error { return p.Sink.Run(runCtx) })
	}
	if has(cfg.Roles, RoleNotifier) {
		nc := cfg.Notifier
		nc.Partitions = cfg.Partitions
		if nc.Instance == "" {
			nc.Instance = p.instance(cfg)
		}
		p.Notifier = webhook.New(p.JS, nc, reg, log.Named("notifier"))
		p.goRun("notifier", func() error { return p.Notifier.Run(runCtx) })
	}
	configured := cfg.ActuatorConfig != "" || cfg.Actuator.Drivers != nil
	if has(cfg.Roles, RoleActuator) && !configured && len(cfg.Roles) == 1 {
		return nil, errors.New("actuator: --actuator-config names no file: the carriers' drivers are needed")
	}
	if has(cfg.Roles, RoleActuator) && configured { // the all-in-one without drivers acts on no carrier
		ac := cfg.Actuator
		ac.Partitions = cfg.Partitions
		if cfg.ActuatorConfig != "" {
			if ac.Drivers, err = actuate.LoadConfig(cfg.ActuatorConfig); err != nil {
				return nil, fmt.Errorf("actuator: %w", err)
			}
		}
		if ac.Instance == "" {
			ac.Instance = p.instance(cfg)
		}
		p.Actuator = actuate.NewActuator(p.JS, ac, reg, log.Named("actuator"))
		p.goRun("actuator", func() error { return p.Actuator.Run(runCtx) })
	}
	if has(cfg.Roles, RoleAPI) || has(cfg.Roles, RoleClock) {
		p.Clock = clock.New(p.JS, clock.Config{Partitions: cfg.Partitions, Manual: cfg.ManualClock, Interval: cfg.TickInterval, Start: unixOrZero(cfg.ClockStart)}, log.Named("clock"))
		if err := retry("reading the clock", p.Clock.Start); err != nil {
			return nil, err
		}
		if has(cfg.Roles, RoleClock) {
			p.runsClock = true
			p.goRun("clock", func() error { return p.Clock.Run(runCtx) })
		}
	}
	if has(cfg.Roles, RoleAPI) {
		var dir *api.Directory
		apiCfg := cfg.API
		if cfg.AnalystUser != "" && cfg.ClickHouse.Addr != "" && apiCfg.Analytics == nil {
			apiCfg.Analytics = &api.Analytics{Addrs: cfg.ClickHouse.Addrs(), Database: cfg.ClickHouse.Database,
				User: cfg.AnalystUser, Password: cfg.AnalystPassword}
		}
		if err := retry("opening the directory and the batch buckets", func(ctx context.Context) error {
			kv, err := p.JS.KeyValue(ctx, broker.BucketDir)
			if err != nil {
				return err
			}
			if apiCfg.Batches, err = p.JS.KeyValue(ctx, broker.BucketBatches); err != nil {
				return err
			}
			if apiCfg.Resolved, err = p.JS.KeyValue(ctx, broker.BucketResolved); err != nil {
				return err
			}
			if apiCfg.Webhooks, err = p.JS.KeyValue(ctx, broker.BucketWebhooks); err != nil {
				return err
			}
			dir, err = api.NewDirectory(runCtx, kv, log.Named("directory"))
			return err
		}); err != nil {
			return nil, err
		}
		apiCfg.Partitions = cfg.Partitions
		apiCfg.Healthy = p.healthy
		apiCfg.WebhookAllowPrivate = cfg.Notifier.AllowPrivate
		if apiCfg.Tokens, err = loadTokens(cfg); err != nil {
			return nil, err
		}
		if apiCfg.Tokens != nil && cfg.TokensFile != "" {
			if err := watchTokens(runCtx, cfg.TokensFile, apiCfg.Tokens, reg, log.Named("tokens")); err != nil {
				return nil, fmt.Errorf("api: watching the tokens file: %w", err)
			}
		}
		if apiCfg.Tokens == nil && !loopback(cfg.HTTPAddr) {
			return nil, fmt.Errorf("api: no tokens configured (--tokens-file or CARDMETER_TOKENS): an open API may listen on loopback only, not %s", cfg.HTTPAddr)
		}
		srv := api.New(apiCfg, p.NC, p.JS, dir, p.Clock, reg, p.ready, log.Named("api"))
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		p.URL = "http://" + ln.Addr().String()
		if apiCfg.Tokens == nil {
			log.Warn("NO TOKENS CONFIGURED: the API is open to anyone who can reach it; it listens on loopback only", zap.String("url", p.URL))
		}
		p.api = srv
		p.httpSrv = &http.Server{Handler: srv, ReadHeaderTimeout: orDefault(cfg.ReadHeaderTimeout, 10*time.Second),
			ReadTimeout: orDefault(cfg.ReadTimeout, 2*time.Minute), WriteTimeout: 5 * time.Minute, IdleTimeout: 2 * time.Minute}
		p.goRun("api", func() error {
			if err := p.httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		log.Info("api listening", zap.String("url", p.URL))
	} else if cfg.HealthAddr != "" {
		if err := p.serveHealth(cfg.HealthAddr, reg); err != nil {
			return nil, err
		}
	}
	if sources := p.statusSources(); len(sources) > 0 {
		name := p.instance(cfg)
		if name == "" {
			host, _ := os.Hostname()
			name = fmt.Sprintf("%s:%d", host, os.Getpid())
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			status.Publish(runCtx, p.JS, name, cfg.StatusEvery, sources, log.Named("status"))
		}()
	}
	return p, nil
}

// statusSources are the reports of the roles this process runs, for the
// status bucket (GET /v1/status).
func (p *Pipeline) statusSources() []status.Source {
	var out []status.Source
	why := func(err error) (bool, string) {
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	}
	if p.api != nil {
		var last time.Time
		var lastStored, lastRejected int64
		out = append(out, status.Source{Role: broker.RoleIngest, Report: func() status.Report {
			stored, rejected := p.api.Intake()
			var in *status.Ingest // the first report knows no rate yet
			now := time.Now()
			if !last.IsZero() {
				secs := now.Sub(last).Seconds()
				in = &status.Ingest{RecordsPerSecond: float64(stored-lastStored) / secs, RejectedPerSecond: float64(rejected-lastRejected) / secs}
			}
			last, lastStored, lastRejected = now, stored, rejected
			return status.Report{Ready: true, Ingest: in}
		}})
	}
	if pr := p.Projector; pr != nil {
		out = append(out, status.Source{Role: broker.RoleProjector, Report: func() status.Report {
			ready, detail := why(pr.Ready())
			st := pr.Status()
			return status.Report{Ready: ready, Detail: detail, Projector: &st}
		}})
	}
	if sk := p.Sink; sk != nil {
		out = append(out, status.Source{Role: broker.RoleSink, Report: func() status.Report {
			ready, detail := why(sk.Healthy())
			st := sk.Status()
			return status.Report{Ready: ready, Detail: detail, Sink: &st}
		}})
	}
	if n := p.Notifier; n != nil {
		out = append(out, status.Source{Role: broker.RoleNotifier, Report: func() status.Report {
			ready, detail := why(n.Healthy())
			return status.Report{Ready: ready, Detail: detail}
		}})
	}
	if a := p.Actuator; a != nil {
		out = append(out, status.Source{Role: broker.RoleActuator, Report: func() status.Report {
			ready, detail := why(a.Healthy())
			return status.Report{Ready: ready, Detail: detail}
		}})
	}
	if p.runsClock {
		out = append(out, status.Source{Role: broker.RoleClock, Report: func() status.Report { return status.Report{Ready: true} }})
	}
	return out
}

// serveHealth serves the operational endpoints of a process without the API.
func (p *Pipeline) serveHealth(addr string, reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := p.healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		_, err := p.ready()
		if err == nil && p.NC.Status() != nats.CONNECTED {
			err = errors.New("not connected to NATS")
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	p.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	p.goRun("health", func() error {
		if err := p.httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	p.HealthURL = "http://" + ln.Addr().String()
	p.log.Info("health endpoints listening", zap.String("addr", ln.Addr().String()))
	return nil
}

func (p *Pipeline) goRun(name string, f func() error) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := f(); err != nil {
			p.log.Error("service failed", zap.String("service", name), zap.Error(err))
			p.errMu.Lock()
			if p.err == nil {
				p.err = fmt.Errorf("%s: %w", name, err)
			}
			p.errMu.Unlock()
		}
	}()
}

// healthy is the pipeline's liveness for /healthz: it fails when a role can
// no longer make progress, so that a supervisor restarts the process.
func (p *Pipeline) healthy() error {
	if p.Projector != nil {
		if err := p.Projector.Healthy(); err != nil {
			return fmt.Errorf("projector: %w", err)
		}
	}
	return nil
}

// instance names this process for a role's leases when --instance does
// not: with a projector here, its name (the host and the data folder it
// locks), so that a restart takes the role's units back at once too.
func (p *Pipeline) instance(cfg Config) string {
	if p.Projector != nil {
		return p.Projector.Owner()
	}
	return cfg.Projector.Owner
}

// ready is the pipeline's readiness for /readyz.
func (p *Pipeline) ready() (api.Readiness, error) {
	var rd api.Readiness
	if p.Projector != nil {
		if err := p.Projector.Ready(); err != nil {
			return rd, err
		}
		lag := p.Projector.Lag()
		rd.ProjectorLag = &lag
	}
	if p.Sink != nil {
		if err := p.Sink.Healthy(); err != nil {
			return rd, fmt.Errorf("sink: %w", err)
		}
		pending := p.Sink.Pending()
		rd.SinkPending = &pending
	}
	if p.Notifier != nil {
		if err := p.Notifier.Healthy(); err != nil {
			return rd, fmt.Errorf("notifier: %w", err)
		}
	}
	if p.Actuator != nil {
		if err := p.Actuator.Healthy(); err != nil {
			return rd, fmt.Errorf("actuator: %w", err)
		}
	}
	return rd, nil
}

// Err is the first error a service stopped with, if any.
func (p *Pipeline) Err() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// Stop shuts down in reverse order of the data's path: the API stops taking
// writes, then the clock, projector and sink finish (the projector flushes
// and snapshots), then the connection drains and the embedded server stops.
func (p *Pipeline) Stop() {
	select {
	case <-p.stopped:
		return
	default:
		close(p.stopped)
	}
	if p.httpSrv != nil {
		if p.api != nil { // (a process without the API serves only its health endpoints)
			p.api.EndStreams()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = p.httpSrv.Shutdown(ctx) // in-flight requests finish or are cut at the deadline
		cancel()
	}
	if p.api != nil {
		p.api.Drain() // the audit entries of the last writes
	}
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	if p.NC != nil {
		_ = p.NC.Drain()
		for i := 0; i < 50 && !p.NC.IsClosed(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
		p.NC.Close()
	}
	if p.embedded != nil {
		p.embedded.Shutdown()
		p.embedded.WaitForShutdown()
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// loopback reports whether a listen address is on the loopback interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func loadTokens(cfg Config) (*api.Tokens, error) {
	switch {
	case cfg.TokensFile != "":
		return api.LoadTokens(cfg.TokensFile)
	case cfg.Tokens != "":
		t, err := api.ParseTokens(cfg.Tokens)
		if err != nil {
			return nil, fmt.Errorf("CARDMETER_TOKENS: %w", err)
		}
		return t, nil
	}
	return nil, nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}
