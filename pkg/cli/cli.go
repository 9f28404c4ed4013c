// Package cli holds the client commands of the cardmeter binary: push,
// and rejections list/resubmit. Each returns the process's exit code.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/push"
	"github.com/cardmeter/cardmeter/pkg/sink"
)

// Exit codes of push.
const (
	ExitOK       = 0
	ExitFailed   = 1
	ExitUsage    = 2
	ExitRejected = 3 // pushed, but some records were rejected
)

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Push is `cardmeter push [flags] FILE...`.
func Push(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg push.Config
	fs.StringVar(&cfg.URL, "url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL)")
	fs.StringVar(&cfg.Carrier, "carrier", os.Getenv("CARDMETER_CARRIER"), "the carrier, when the token may push for several (open API: the carrier to push as)")
	fs.IntVar(&cfg.BatchRecords, "batch-records", 10000, "records per batch")
	fs.StringVar(&cfg.Format, "format", "", "csv or ndjson (default: from the file name, .csv/.ndjson/.jsonl, optionally .gz)")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "where resume state is kept (default: beside each file, FILE.push-state)")
	fs.BoolVar(&cfg.Wait, "wait", true, "wait for the projector's verdicts, to report record-level duplicates")
	noProgress := fs.Bool("no-progress", false, "no progress bar")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cardmeter push [flags] FILE...\n\nStreams CSV or NDJSON files (plain or gzip) to the API in batches; an\ninterrupted push resumes where it stopped. The token is read from CARDMETER_TOKEN.\nExit: 0 all accepted, 3 pushed with rejected records, 1 failed, 2 usage.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return ExitUsage
	}
	cfg.Token = os.Getenv("CARDMETER_TOKEN")
	if !*noProgress {
		cfg.Progress = stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := push.Run(ctx, cfg, fs.Args())
	sum.Print(stdout)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "interrupted: run the same command again to resume")
		} else {
			fmt.Fprintln(stderr, "push failed:", err)
		}
		return ExitFailed
	}
	if sum.Rejected > 0 {
		return ExitRejected
	}
	return ExitOK
}

// Rejections is `cardmeter rejections list|resubmit`.
func Rejections(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "list" && args[0] != "resubmit") {
		fmt.Fprintln(stderr, "usage: cardmeter rejections list [--carrier C] [--pending] [--since T]\n       cardmeter rejections resubmit (--all | ID...)")
		return ExitUsage
	}
	fs := flag.NewFlagSet("rejections "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL)")
	carrier := fs.String("carrier", os.Getenv("CARDMETER_CARRIER"), "the carrier")
	pending := fs.Bool("pending", false, "list: only those not re-submitted")
	since := fs.String("since", "", "list: from this RFC 3339 time")
	all := fs.Bool("all", false, "resubmit: every pending rejection of the carrier")
	if err := fs.Parse(args[1:]); err != nil {
		return ExitUsage
	}
	c := &http.Client{Timeout: time.Minute}
	do := func(method, path string, body any) int {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, strings.TrimSuffix(*url, "/")+path, rd)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return ExitFailed
		}
		req.Header.Set("Content-Type", "application/json")
		if t := os.Getenv("CARDMETER_TOKEN"); t != "" {
			req.Header.Set("Authorization", "Bearer "+t)
		}
		resp, err := c.Do(req)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return ExitFailed
		}
		defer resp.Body.Close()
		_, _ = io.Copy(stdout, resp.Body)
		if resp.StatusCode != 200 {
			return ExitFailed
		}
		return ExitOK
	}
	if args[0] == "list" {
		q := []string{}
		if *carrier != "" {
			q = append(q, "carrier="+*carrier)
		}
		if *pending {
			q = append(q, "pending=true")
		}
		if *since != "" {
			q = append(q, "since="+*since)
		}
		return do("GET", "/v1/rejections?"+strings.Join(q, "&"), nil)
	}
	if !*all && fs.NArg() == 0 {
		fmt.Fprintln(stderr, "name rejection ids, or --all")
		return ExitUsage
	}
	path := "/v1/rejections/resubmit"
	if *carrier != "" {
		path += "?carrier=" + *carrier
	}
	return do("POST", path, map[string]any{"ids": fs.Args(), "all": *all})
}

// Rebuild is `cardmeter rebuild --clickhouse-db NAME`: it writes the
// analytics tables of a database anew from the log, with progress, while
// the pipeline keeps running.
func Rebuild(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", getenv("CARDMETER_NATS_URL", "nats://127.0.0.1:4222"), "NATS with the log (the all-in-one's embedded server listens on 4222)")
	partitions := fs.Int("partitions", 0, "partitions of the log (default: as the log says; a different value is refused)")
	var ch sink.ClickHouseConfig
	fs.StringVar(&ch.Addr, "clickhouse-addr", getenv("CARDMETER_CLICKHOUSE_ADDR", "127.0.0.1:19000"), "ClickHouse native address")
	fs.StringVar(&ch.Database, "clickhouse-db", "", "the database to write (required); it should hold no rows")
	fs.StringVar(&ch.User, "clickhouse-user", getenv("CARDMETER_CLICKHOUSE_USER", "default"), "ClickHouse user")
	batch := fs.Int("batch-rows", 50000, "rows per insert")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cardmeter rebuild --clickhouse-db NAME [flags]\n\nReplays the log through the fold and writes the analytics tables of NAME\nanew (for a new table, a lost disk, a schema change). Then point the sink at\nNAME (--clickhouse-db): it goes on from where the rebuild stopped.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if ch.Database == "" {
		fs.Usage()
		return ExitUsage
	}
	ch.Password = os.Getenv("CARDMETER_CLICKHOUSE_PASSWORD")
	log := zap.NewNop()
	nc, js, err := connectTool(*natsURL, "cardmeter-rebuild")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitFailed
	}
	defer nc.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	topo, err := broker.ReadTopology(ctx, js)
	if err == nil && topo.Partitions == 0 {
		err = fmt.Errorf("the log has no partition count in its metadata: run `cardmeter setup` (or start the pipeline) once")
	}
	if err == nil {
		*partitions, err = broker.CheckPartitions(*partitions, topo)
	}
	if err != nil {
		fmt.Fprintln(stderr, "rebuild:", err)
		return ExitFailed
	}
	var bar *progressbar.ProgressBar
	start := time.Now()
	st, err := sink.Rebuild(ctx, js, ch, *partitions, *batch, func(done, total uint64) {
		if bar == nil {
			bar = progressbar.NewOptions64(int64(total), progressbar.OptionSetWriter(stderr), progressbar.OptionSetDescription("log messages"),
				progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond))
		}
		_ = bar.Set64(int64(done))
	}, log)
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "rebuild failed:", err)
		return ExitFailed
	}
	fmt.Fprintf(stdout, "rebuilt %s up to log position %d in %s: %d messages, %d usage rows, %d events\n",
		ch.Database, st.UpTo, time.Since(start).Round(time.Millisecond), st.Messages, st.UsageRows, st.EventRows)
	fmt.Fprintf(stdout, "now run the sink with --clickhouse-db %s: it goes on from position %d\n", ch.Database, st.UpTo)
	return ExitOK
}

// connectTool connects a tool to NATS with its credentials.
func connectTool(url, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := broker.Connect(url, name, zap.NewNop(), natsCredentials(getenv)...)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// natsCredentials are a tool's NATS credentials from the environment: a
// credentials file (CARDMETER_NATS_CREDS), a user and password
// (CARDMETER_NATS_USER, CARDMETER_NATS_PASSWORD), or the all-in-one's
// admin user (CARDMETER_NATS_ADMIN_PASSWORD, as the all-in-one was given).
func natsCredentials(getenv func(string, string) string) []nats.Option {
	var tls []nats.Option
	if ca := getenv("CARDMETER_NATS_CA", ""); ca != "" {
		tls = append(tls, nats.RootCAs(ca))
	}
	return append(tls, natsUser(getenv)...)
}

func natsUser(getenv func(string, string) string) []nats.Option {
	switch {
	case getenv("CARDMETER_NATS_CREDS", "") != "":
		return []nats.Option{nats.UserCredentials(getenv("CARDMETER_NATS_CREDS", ""))}
	case getenv("CARDMETER_NATS_USER", "") != "":
		user := getenv("CARDMETER_NATS_USER", "")
		return []nats.Option{nats.UserInfo(user, getenv("CARDMETER_NATS_PASSWORD", "")), nats.CustomInboxPrefix(broker.InboxPrefix(user))}
	case getenv("CARDMETER_NATS_ADMIN_PASSWORD", "") != "":
		return []nats.Option{nats.UserInfo(broker.UserAdmin, getenv("CARDMETER_NATS_ADMIN_PASSWORD", ""))}
	}
	return nil
}

// Setup is `cardmeter setup`: it creates or updates every stream and
// bucket on a NATS server, as the NATS admin, so that the roles' users
// need no right to change the topology (they wait for it:
// --wait-for-topology). Credentials come from the environment as for
// rebuild. It is idempotent: run it at every deployment.
func Setup(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", getenv("CARDMETER_NATS_URL", "nats://127.0.0.1:4222"), "the NATS server or cluster")
	topo := broker.DefaultTopology
	topo.Partitions = 0
	fs.IntVar(&topo.Partitions, "partitions", atoi(getenv("CARDMETER_PARTITIONS", ""), 0), "partitions of a new log (default 8 with one replica, 32 with more); an existing log keeps its count, and a different value is refused")
	topo.LeaseTTL = 0
	fs.DurationVar(&topo.LeaseTTL, "lease-ttl", 0, fmt.Sprintf("how long a partition's lease outlives its owner's last renewal: the longest a dead instance's partitions wait for another; 0: as the leases bucket has it (%s for a new one)", broker.DefaultTopology.LeaseTTL))
	fs.IntVar(&topo.Replicas, "replicas", atoi(getenv("CARDMETER_REPLICAS", ""), topo.Replicas), "copies of each stream and bucket: 3 on a cluster (existing ones are updated to it); 0: as the log has them, 1 for a new log")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for NATS")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	nc, js, err := connectTool(*natsURL, "cardmeter-setup")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitFailed
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0)), ctx)
	err = backoff.RetryNotify(func() error {
		// an attempt of its own deadline: a request no server answers
		// (no meta leader yet) waits until its context ends
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		t, err := broker.Ensure(actx, js, topo)
		if errors.Is(err, broker.ErrTopology) {
			return backoff.Permanent(err)
		}
		if err == nil {
			topo = t
		}
		return err
	}, bo, func(err error, d time.Duration) {
		fmt.Fprintf(stderr, "setup: %v; retrying in %s\n", err, d.Round(time.Millisecond))
	})
	if err != nil {
		fmt.Fprintln(stderr, "setup:", err)
		return ExitFailed
	}
	fmt.Fprintf(stdout, "setup: %d streams and buckets ready (%d partitions, %d replicas)\n", len(broker.StreamNames), topo.Partitions, topo.Replicas)
	return ExitOK
}

func atoi(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return def
}
