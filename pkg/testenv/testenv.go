// Package testenv gives tests real components: an embedded JetStream
// server per test (file storage in a temp dir) and a fresh database on the
// real ClickHouse that `make test` starts.
package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/sink"
)

// ClickHouseAddr is the test server: CARDMETER_TEST_CLICKHOUSE_ADDR, else
// the port deploy/local/clickhouse.sh listens on.
func ClickHouseAddr() string {
	if a := os.Getenv("CARDMETER_TEST_CLICKHOUSE_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:19000"
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// ClickHouse returns the config of a fresh database, dropped after the test.
// It fails the test when ClickHouse does not answer: run `make test`, which
// installs and starts it.
func ClickHouse(t testing.TB) sink.ClickHouseConfig {
	t.Helper()
	addr := ClickHouseAddr()
	if err := ping(addr); err != nil {
		t.Fatalf("ClickHouse at %s does not answer (%v): run `make test`, which starts it (deploy/local/clickhouse.sh start)", addr, err)
	}
	db := dbName(t)
	t.Cleanup(func() {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 3 * time.Second})
		if err != nil {
			return
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
	})
	return sink.ClickHouseConfig{Addr: addr, Database: db, User: "default"}
}

// dbName is a fresh database name for a test.
func dbName(t testing.TB) string {
	name := nonWord.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("test_%s_%08x", name, rand.Uint32())
}

// ClickHouseConn opens a connection to a test database.
func ClickHouseConn(t testing.TB, cfg sink.ClickHouseConfig) driver.Conn {
	t.Helper()
	conn, err := sink.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// JetStream starts an embedded JetStream server (fsync before ack, files in
// a temp dir), creates the topology, and returns a connection to it.
func JetStream(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return jetStream(t, false)
}

// JetStreamNoSync is JetStream acknowledging writes before the disk has
// them: for a fuzzer, which tests answers, not the disk, at thousands of
// requests a second.
func JetStreamNoSync(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return jetStream(t, true)
}

func jetStream(t testing.TB, noSync bool) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	log := Logger(t)
	s, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1, NoSync: noSync}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := broker.Connect(s.ClientURL(), t.Name(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := broker.Ensure(context.Background(), js, broker.DefaultTopology); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Logger logs to the test's output at warn level and above.
func Logger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
}

// Eventually polls cond until it returns nil or the deadline passes, then
// fails with cond's last error.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", within, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Replicas are the two ClickHouse servers of the local cluster
// (deploy/local/clickhouse-cluster.sh), which a test may stop and start:
// no other test uses them at the same time (tests that take them hold a
// lock while they run).
type Replicas struct {
	t     testing.TB
	Addrs []string
}

// ClickHouseCluster returns the config of a fresh database on the local
// replicated cluster "cardmeter", dropped after the test, and its
// replicas. It fails the test when the replicas do not answer: run `make
// test`, which starts them.
func ClickHouseCluster(t testing.TB) (sink.ClickHouseConfig, *Replicas) {
	t.Helper()
	clusterMu.Lock()
	t.Cleanup(clusterMu.Unlock)
	rs := &Replicas{t: t, Addrs: []string{"127.0.0.1:19101", "127.0.0.1:19102"}}
	for n := range rs.Addrs {
		if err := ping(rs.Addrs[n]); err != nil {
			t.Fatalf("ClickHouse replica %s does not answer (%v): run `make test`, which starts them (deploy/local/clickhouse-cluster.sh start)", rs.Addrs[n], err)
		}
	}
	cfg := sink.ClickHouseConfig{Addr: strings.Join(rs.Addrs, ","), Database: dbName(t), User: "default", Cluster: "cardmeter"}
	t.Cleanup(func() {
		// both back, then the database dropped on both
		for n := range rs.Addrs {
			rs.Start(n + 1)
		}
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: rs.Addrs, DialTimeout: 3 * time.Second})
		if err != nil {
			return
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+cfg.Database+" ON CLUSTER cardmeter")
	})
	return cfg, rs
}

var clusterMu sync.Mutex

// Replica returns the config of the same database on replica n alone (1 or
// 2), to read what that replica holds.
func (rs *Replicas) Replica(cfg sink.ClickHouseConfig, n int) sink.ClickHouseConfig {
	cfg.Addr = rs.Addrs[n-1]
	return cfg
}

// Stop stops replica n and returns once it has exited.
func (rs *Replicas) Stop(n int) { rs.script("stop-replica", fmt.Sprint(n)) }

// Start starts replica n and returns once it answers.
func (rs *Replicas) Start(n int) { rs.script("start-replica", fmt.Sprint(n)) }

func (rs *Replicas) script(args ...string) {
	rs.t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(root(), "deploy/local/clickhouse-cluster.sh")}, args...)...)
	cmd.Dir = root() // the script's data folder is .data under the checkout, as `make test` ran it
	if out, err := cmd.CombinedOutput(); err != nil {
		rs.t.Fatalf("clickhouse-cluster.sh %v: %v\n%s", args, err, out)
	}
}

// root is the checkout: the folder holding go.mod above the test's own.
func root() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

func ping(addr string) error {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 3 * time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Ping(context.Background())
}

// Chromium is the path of Debian's chromium, which the console's browser
// tests drive headless. It fails the test when it is missing: run `make
// test`, which installs it (deploy/local/deps.sh).
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{os.Getenv("CARDMETER_TEST_CHROMIUM"), "chromium", "chromium-browser"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: run `make test`, which installs it (deploy/local/deps.sh)")
	return ""
}
