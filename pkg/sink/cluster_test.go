package sink_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cardmeter/cardmeter/pkg/broker"
	. "github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// Every migration rewrites for a cluster, and the rewrite is what
// ClickHouse is asked: qualified names, ON CLUSTER, replicated engines
// with their arguments kept.
func TestReplicatedRewrite(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		for _, stmt := range Statements(m.SQL) {
			if _, err := Replicated(stmt, "db", "c"); err != nil {
				t.Errorf("%s: %v", m.Name, err)
			}
		}
	}
	cases := map[string]string{
		"CREATE TABLE IF NOT EXISTS t\n(a UInt8)\nENGINE = SummingMergeTree((a, b))\nORDER BY a": "CREATE TABLE IF NOT EXISTS `db`.t ON CLUSTER `c`\n" +
			"(a UInt8)\nENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/db/t', '{replica}', (a, b))\nORDER BY a\nSETTINGS replicated_deduplication_window = 10000",
		"CREATE TABLE IF NOT EXISTS t (a UInt8) ENGINE = MergeTree() ORDER BY a": "CREATE TABLE IF NOT EXISTS `db`.t ON CLUSTER `c`\n" +
			"(a UInt8) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/t', '{replica}') ORDER BY a\nSETTINGS replicated_deduplication_window = 10000",
		"CREATE MATERIALIZED VIEW IF NOT EXISTS v TO t AS\nSELECT a FROM s WHERE a > 1": "CREATE MATERIALIZED VIEW IF NOT EXISTS `db`.v ON CLUSTER `c` TO `db`.t AS\nSELECT a FROM `db`.s WHERE a > 1",
		"DROP TABLE IF EXISTS v":                               "DROP TABLE IF EXISTS `db`.v ON CLUSTER `c`",
		"ALTER TABLE t ADD COLUMN b String DEFAULT '' AFTER a": "ALTER TABLE `db`.t ON CLUSTER `c` ADD COLUMN b String DEFAULT '' AFTER a",
	}
	for in, want := range cases {
		got, err := Replicated(in, "db", "c")
		if err != nil || got != want {
			t.Errorf("Replicated(%q) =\n%s (%v)\nwant\n%s", in, got, err, want)
		}
	}
	for _, bad := range []string{"ALTER TABLE t DROP COLUMN b", "CREATE TABLE IF NOT EXISTS t (a UInt8) ENGINE = Log", "INSERT INTO t SELECT 1",
		"CREATE TABLE IF NOT EXISTS t (a UInt8) ENGINE = ReplicatedMergeTree('/x', 'r') ORDER BY a"} {
		if _, err := Replicated(bad, "db", "c"); err == nil {
			t.Errorf("Replicated(%q) took a statement it cannot replicate", bad)
		}
	}
}

// holds reads what one replica holds: usage rows, distinct positions, and
// the records of the daily card rollup.
func holds(t *testing.T, ch ClickHouseConfig) (rows, distinct, rolled uint64, err error) {
	t.Helper()
	conn, err := Open(context.Background(), ch)
	if err != nil {
		return 0, 0, 0, err
	}
	defer conn.Close()
	ctx := context.Background()
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(partition, src_seq, idx) FROM usage_records").Scan(&rows, &distinct); err != nil {
		return 0, 0, 0, err
	}
	if err := conn.QueryRow(ctx, "SELECT sum(records) FROM usage_daily_card").Scan(&rolled); err != nil {
		return 0, 0, 0, err
	}
	return rows, distinct, rolled, nil
}

// wantOnBoth waits until both replicas hold want rows, each once, and
// rollups that count them once.
func wantOnBoth(t *testing.T, ch ClickHouseConfig, rs *testenv.Replicas, want uint64) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, func() error {
		for n := 1; n <= 2; n++ {
			rows, distinct, rolled, err := holds(t, rs.Replica(ch, n))
			if err != nil {
				return err
			}
			if rows != want || distinct != want || rolled != want {
				return fmt.Errorf("replica %d: %d rows, %d distinct, %d rolled up; want %d of each", n, rows, distinct, rolled, want)
			}
		}
		return nil
	})
}

// migrated applies the schema on the cluster while both replicas are up.
func migrated(t *testing.T, ch ClickHouseConfig) {
	t.Helper()
	conn, err := Open(context.Background(), ch)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := Migrate(context.Background(), conn, ch); err != nil {
		t.Fatal(err)
	}
	for _, addr := range strings.Split(ch.Addr, ",") {
		one := ch
		one.Addr = addr
		if _, _, _, err := holds(t, one); err != nil {
			t.Fatalf("replica %s after the migrations: %v", addr, err)
		}
	}
}

// A replica stopped under load: the sink goes on through the other; once
// it is back, both hold every row once and rollups that count each once.
func TestReplicaStoppedUnderLoad(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch, rs := testenv.ClickHouseCluster(t)
	migrated(t, ch)
	s := New(js, ch, Config{Partitions: 2, BatchRows: 200, FlushInterval: 100 * time.Millisecond}, nil, testenv.Logger(t))
	stop := runSink(t, s)
	defer stop()
	const rounds, rows = 60, 20
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := 0; r < rounds; r++ {
			for p := 0; p < 2; p++ {
				publishAccepted(t, js, p, 1, rows, uint64(r+1))
			}
			switch r {
			case 15:
				rs.Stop(1) // the replica the sink writes to
			case 45:
				rs.Start(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	wg.Wait()
	wantOnBoth(t, ch, rs, rounds*2*rows)
}

// A block inserted on one replica, then its sink crashed before its
// position moved; the replica goes down before the other has the block.
// The next sink, on the other replica, inserts the same block again (it
// cannot see it there): the replica drops it as a repeat, and once the
// first is back both hold it once, rollups too.
func TestRepeatOnTheOtherReplicaIsDropped(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch, rs := testenv.ClickHouseCluster(t)
	migrated(t, ch)
	publishAccepted(t, js, 0, 10, 10, 1)
	rs.Stop(2)
	crashed := errors.New("killed after the insert")
	var once sync.Once
	first := New(js, rs.Replica(ch, 1), Config{Partitions: 1, BatchRows: 1000, FlushInterval: 200 * time.Millisecond,
		AfterInsert: func(stream string) error {
			err := error(nil)
			if stream == broker.StreamAccepted {
				once.Do(func() { err = crashed })
			}
			return err
		}}, nil, testenv.Logger(t))
	if err := first.Run(context.Background()); !errors.Is(err, crashed) {
		t.Fatalf("first sink: %v", err)
	}
	if rows, _, _, err := holds(t, rs.Replica(ch, 1)); err != nil || rows != 100 {
		t.Fatalf("replica 1 holds %d rows (%v), want the block's 100", rows, err)
	}
	rs.Stop(1)
	rs.Start(2)
	publishAccepted(t, js, 0, 10, 10, 11)
	reg := prometheus.NewRegistry()
	second := New(js, rs.Replica(ch, 2), Config{Partitions: 1, BatchRows: 1000, FlushInterval: 200 * time.Millisecond}, reg, testenv.Logger(t))
	stop := runSink(t, second)
	defer stop()
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := metric(t, reg, "cardmeter_sink_blocks_repeated_total"); n != 1 {
			return fmt.Errorf("%v blocks repeated, want 1", n)
		}
		if n := metric(t, reg, "cardmeter_sink_rows_inserted_total"); n != 200 {
			return fmt.Errorf("the second sink sent %v rows, want 200: the repeated block whole, and the rest", n)
		}
		return nil
	})
	// the later rows are in; the repeated block is not (yet) here
	conn := testenv.ClickHouseConn(t, rs.Replica(ch, 2))
	var rows, early uint64
	if err := conn.QueryRow(context.Background(), "SELECT count(), countIf(src_seq <= 10) FROM usage_records").Scan(&rows, &early); err != nil {
		t.Fatal(err)
	}
	if rows != 100 || early != 0 {
		t.Fatalf("replica 2 holds %d rows, %d of them the repeated block's: want only the 100 after it", rows, early)
	}
	rs.Start(1)
	wantOnBoth(t, ch, rs, 200)
}
