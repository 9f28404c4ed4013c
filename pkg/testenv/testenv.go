// Package testenv gives tests real components: an embedded JetStream
// server per test (file storage in a temp dir) and a fresh database on the
// real ClickHouse that `make test` starts.
package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
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
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 3 * time.Second})
	if err == nil {
		err = conn.Ping(context.Background())
	}
	if err != nil {
		t.Fatalf("ClickHouse at %s does not answer (%v): run `make test`, which starts it (deploy/local/clickhouse.sh start)", addr, err)
	}
	name := nonWord.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	db := fmt.Sprintf("test_%s_%08x", name, rand.Uint32())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
		conn.Close()
	})
	return sink.ClickHouseConfig{Addr: addr, Database: db, User: "default"}
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
