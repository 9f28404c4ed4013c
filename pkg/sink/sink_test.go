package sink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/event"
	"github.com/cardmeter/cardmeter/pkg/lease"
	. "github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// publishAccepted writes n accepted chunks of rows records to partition p,
// as the projector would.
func publishAccepted(t *testing.T, js jetstream.JetStream, p, n, rows int, firstSeq uint64) {
	for i := 0; i < n; i++ {
		a := event.Accepted{Partition: p, Seq: firstSeq + uint64(i), Carrier: "cmcc", ReceivedAt: 1773140000}
		for j := 0; j < rows; j++ {
			a.Rows = append(a.Rows, event.AcceptedRow{Index: j, RecordID: fmt.Sprintf("r-%d-%d-%d", p, a.Seq, j), ICCID: fmt.Sprint("card-", p),
				AccountID: "a", PlanID: "p", Start: 1773130000 + int64(j), End: 1773130060 + int64(j), BytesUp: 1, BytesDown: 2, CycleStart: 1772294400})
		}
		b, _ := a.Marshal()
		m := nats.NewMsg(broker.AcceptedSubject(p))
		m.Data = b
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("acc-%d-%d", p, a.Seq))
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
}

// metric sums a counter's samples in a registry.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

var (
	connMu sync.Mutex
	conns  = map[string]driver.Conn{}
)

// count runs a count query on one connection per database.
func count(t *testing.T, _ *Sink, ch ClickHouseConfig, q string) uint64 {
	connMu.Lock()
	conn, ok := conns[ch.Database]
	if !ok {
		conn = testenv.ClickHouseConn(t, ch)
		conns[ch.Database] = conn
	}
	connMu.Unlock()
	var n uint64
	if err := conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The sink is killed between an insert and its ack; JetStream delivers the
// block again to the next sink, which finds what ClickHouse already holds
// and inserts nothing twice.
func TestCrashBetweenInsertAndAck(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	publishAccepted(t, js, 0, 30, 100, 10)
	publishAccepted(t, js, 1, 30, 100, 10)
	// a per-partition consumer an older sink left behind
	legacy := "sink-" + ch.Database + "-usage-1"
	if _, err := js.CreateOrUpdateConsumer(context.Background(), broker.StreamAccepted, jetstream.ConsumerConfig{
		Durable: legacy, FilterSubject: broker.AcceptedSubject(1), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	crashed := errors.New("killed between insert and ack")
	var once sync.Once
	cfg := Config{Partitions: 2, BatchRows: 1000, FlushInterval: 200 * time.Millisecond,
		AfterInsert: func(stream string) error {
			err := error(nil)
			if stream == broker.StreamAccepted {
				once.Do(func() { err = crashed })
			}
			return err
		}}
	s1 := New(js, ch, cfg, nil, testenv.Logger(t))
	if err := s1.Run(context.Background()); !errors.Is(err, crashed) {
		t.Fatalf("first sink: %v", err)
	}
	// the first block is in ClickHouse, its position not past it
	if n := count(t, s1, ch, "SELECT count() FROM usage_records"); n == 0 {
		t.Fatal("the crashed sink inserted nothing: the test shows nothing")
	}
	cfg.AfterInsert = nil
	reg := prometheus.NewRegistry()
	s2 := New(js, ch, cfg, reg, testenv.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s2.Run(ctx) }()
	testenv.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("the second sink stopped: %v", err)
		default:
		}
		if n := count(t, s2, ch, "SELECT count() FROM usage_records"); n != 6000 {
			return fmt.Errorf("%d rows, want 6000", n)
		}
		// the crashed block came again, and was found in ClickHouse
		if skipped := metric(t, reg, "cardmeter_sink_rows_skipped_total"); skipped == 0 {
			return errors.New("the sink has not yet seen the crashed block again")
		}
		if repeated := metric(t, reg, "cardmeter_sink_blocks_repeated_total"); repeated == 0 {
			return errors.New("the crashed block was not repeated from its position")
		}
		return nil
	})
	if _, err := js.Consumer(context.Background(), broker.StreamAccepted, legacy); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the older sink's consumer %s is still there (%v)", legacy, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := count(t, s2, ch, "SELECT uniqExact(partition, src_seq, idx) FROM usage_records"); n != 6000 {
		t.Fatalf("%d distinct positions in 6000 rows: a row was inserted twice", n)
	}
	// and the rollups, fed by the inserts, are not inflated either
	if n := count(t, s2, ch, "SELECT sum(records) FROM usage_daily_card"); n != 6000 {
		t.Fatalf("the daily rollup counts %d records, want 6000", n)
	}
}

// proxy is a TCP relay to ClickHouse that a test can cut and restore, to
// play an unreachable ClickHouse.
type proxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	p := &proxy{target: target}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.down)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
}

func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) up(t *testing.T) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.serve(ln)
}

// ClickHouse goes away: the sink backs off, says so in its health, keeps
// the backlog in JetStream, and catches up when ClickHouse returns.
func TestClickHouseOutage(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	px := startProxy(t, ch.Addr)
	viaProxy := ch
	viaProxy.Addr = px.addr
	s := New(js, viaProxy, Config{Partitions: 1, FlushInterval: 100 * time.Millisecond}, nil, testenv.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx) }()
	testenv.Eventually(t, 20*time.Second, s.Healthy)
	px.down()
	publishAccepted(t, js, 0, 5, 10, 1)
	testenv.Eventually(t, 20*time.Second, func() error {
		if s.Healthy() == nil {
			return errors.New("healthy while ClickHouse is unreachable")
		}
		return nil
	})
	px.up(t)
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(t, s, ch, "SELECT count() FROM usage_records"); n != 50 {
			return fmt.Errorf("%d rows after ClickHouse returned, want 50", n)
		}
		return s.Healthy()
	})
}

// Two sinks share the units (each partition's usage, and the events):
// each writes some, together every row once; when one stops, the other
// takes its units and goes on from their positions.
func TestSinksShareUnits(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	for p := 0; p < 4; p++ {
		publishAccepted(t, js, p, 5, 10, 1)
	}
	cfg := Config{Partitions: 4, BatchRows: 20, FlushInterval: 100 * time.Millisecond}
	a, b := New(js, ch, cfg, nil, testenv.Logger(t)), New(js, ch, cfg, nil, testenv.Logger(t))
	stopA := runSink(t, a)
	stopB := runSink(t, b)
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(t, a, ch, "SELECT count() FROM usage_records"); n != 200 {
			return fmt.Errorf("%d rows, want 200", n)
		}
		if ha, hb := a.Held(), b.Held(); len(ha) == 0 || len(hb) == 0 || len(ha)+len(hb) != 5 {
			return fmt.Errorf("units held: %v and %v; want the 5 shared", ha, hb)
		}
		return nil
	})
	stopA()
	for p := 0; p < 4; p++ {
		publishAccepted(t, js, p, 5, 10, 6)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(t, b, ch, "SELECT count() FROM usage_records"); n != 400 {
			return fmt.Errorf("%d rows, want 400", n)
		}
		if h := b.Held(); len(h) != 5 {
			return fmt.Errorf("the survivor holds %v, want all 5 units", h)
		}
		return nil
	})
	stopB()
	if n := count(t, b, ch, "SELECT uniqExact(partition, src_seq, idx) FROM usage_records"); n != 400 {
		t.Fatalf("%d distinct positions in 400 rows: a row was inserted twice", n)
	}
}

// A database made by migrations 1 to 3, holding rolled-up usage, takes
// migration 4 (per-record card rollups): the sums read the same, and usage
// inserted after it is rolled up once.
func TestUpgradeKeepsRollups(t *testing.T) {
	ch := testenv.ClickHouse(t)
	conn := testenv.ClickHouseConn(t, ch)
	ctx := context.Background()
	if err := conn.Exec(ctx, `CREATE TABLE schema_migrations (version UInt32, name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version`); err != nil {
		t.Fatal(err)
	}
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:3] {
		for _, stmt := range Statements(m.SQL) {
			if err := conn.Exec(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", m.Name, err)
			}
		}
		if err := b.Append(m.Version, m.Name, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	insert := func(from int) {
		t.Helper()
		q := fmt.Sprintf(`INSERT INTO usage_records (partition, src_seq, idx, carrier, record_id, iccid, account_id, plan_id,
 start_time, end_time, bytes_up, bytes_down, sequence, session_id, apn, rat, imei, cell_id, cycle_start, late, received_at, arrival_delay_s)
 SELECT 0, number + %d, 0, 'cmcc', toString(number + %d), 'card-1', 'a', 'p', toDateTime(1773130000), toDateTime(1773130060),
 1, 2, 0, '', '', '', '', '', toDateTime(1772294400), 0, toDateTime(1773140000), 0 FROM system.numbers LIMIT 100`, from, from)
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	insert(0)
	if err := Migrate(ctx, conn, ch); err != nil {
		t.Fatal(err)
	}
	insert(1000)
	var versions, records, bytes uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM schema_migrations").Scan(&versions); err != nil || versions != uint64(len(ms)) {
		t.Fatalf("%d migrations recorded (%v), want %d", versions, err, len(ms))
	}
	if err := conn.QueryRow(ctx, "SELECT sum(records), sum(bytes_up + bytes_down) FROM usage_daily_card WHERE iccid = 'card-1'").Scan(&records, &bytes); err != nil {
		t.Fatal(err)
	}
	if records != 200 || bytes != 600 {
		t.Fatalf("daily rollup: %d records, %d bytes; want 200 and 600", records, bytes)
	}
	if err := conn.QueryRow(ctx, "SELECT sum(records), sum(bytes) FROM usage_cycle_card WHERE iccid = 'card-1'").Scan(&records, &bytes); err != nil {
		t.Fatal(err)
	}
	if records != 200 || bytes != 600 {
		t.Fatalf("cycle rollup: %d records, %d bytes; want 200 and 600", records, bytes)
	}
}

// A sink taking over from an older one's per-partition consumers starts
// each partition past its consumer's ack floor: what they acked is not
// read again, and the consumers are deleted.
func TestTakeOverFromPerPartitionConsumers(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	ctx := context.Background()
	publishAccepted(t, js, 0, 4, 10, 1) // stream sequences 1-4
	publishAccepted(t, js, 1, 4, 10, 1) // 5-8
	// the older sink acked all of partition 0 and half of partition 1
	for p, acked := range []int{4, 2} {
		c, err := js.CreateOrUpdateConsumer(ctx, broker.StreamAccepted, jetstream.ConsumerConfig{
			Durable: fmt.Sprintf("sink-%s-usage-%d", ch.Database, p), FilterSubject: broker.AcceptedSubject(p), AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatal(err)
		}
		if acked > 0 {
			batch, err := c.Fetch(acked, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for m := range batch.Messages() {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	s := New(js, ch, Config{Partitions: 2, FlushInterval: 200 * time.Millisecond}, nil, testenv.Logger(t))
	stop := runSink(t, s)
	// partition 1's last two messages arrive; what the older sink acked
	// (whose inserts this test did not make) is not read again
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(t, s, ch, "SELECT count() FROM usage_records WHERE partition = 1"); n != 20 {
			return fmt.Errorf("%d rows of partition 1, want 20", n)
		}
		for p := 0; p < 2; p++ {
			name := fmt.Sprintf("sink-%s-usage-%d", ch.Database, p)
			if _, err := js.Consumer(ctx, broker.StreamAccepted, name); !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("the older consumer %s is still there (%v)", name, err)
			}
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond)
	stop()
	if n := count(t, s, ch, "SELECT count() FROM usage_records WHERE partition = 0"); n != 0 {
		t.Fatalf("%d rows of partition 0: the older sink's acked messages were read again", n)
	}
}

// runSink runs a sink until the returned function stops it (and fails the
// test if it ended with an error); it returns once the sink is connected
// and the schema applied.
func runSink(t *testing.T, s *Sink) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testenv.Eventually(t, 30*time.Second, s.Healthy)
	return func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// A unit's position says once the sink has read back what ClickHouse
// holds past it, so that a later start need not scan the table again.
func TestPositionsRememberTheReadBack(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	ctx := context.Background()
	publishAccepted(t, js, 0, 3, 10, 1) // stream sequences 1-3
	s := New(js, ch, Config{Partitions: 1, FlushInterval: 100 * time.Millisecond}, nil, testenv.Logger(t))
	stop := runSink(t, s)
	testenv.Eventually(t, 30*time.Second, func() error {
		behind, err := s.Behind(ctx)
		if err == nil && len(behind) > 0 {
			err = fmt.Errorf("behind: %v", behind)
		}
		return err
	})
	stop()
	kv, err := js.KeyValue(ctx, broker.BucketSink)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, lease.Token("sink-"+ch.Database)+".usage-0")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Done    uint64 `json:"done"`
		Last    uint64 `json:"last"`
		Checked bool   `json:"checked"`
	}
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Done != 3 || p.Last > p.Done || !p.Checked {
		t.Fatalf("position %s: want done at 3, no block pending, checked", e.Value())
	}
}

// With more partitions than MaxUsageUnits, a unit covers a group of them
// (unit u: the partitions p with p % MaxUsageUnits == u). Two sinks share
// the units, every row lands once; a unit without a position of its own
// starts at the lowest of its partitions' positions in the layout before
// groups (reading again only what lies past it) and deletes them.
func TestGroupedUnits(t *testing.T) {
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	ctx := context.Background()
	const partitions = MaxUsageUnits + 4
	for p := 0; p < partitions; p++ {
		publishAccepted(t, js, p, 2, 10, 1) // partition p at stream sequences 2p+1, 2p+2
	}
	cfg := Config{Partitions: partitions, BatchRows: 1000, FlushInterval: 100 * time.Millisecond}
	a, b := New(js, ch, cfg, nil, testenv.Logger(t)), New(js, ch, cfg, nil, testenv.Logger(t))
	name, parts, key1 := a.UnitLayout(1)
	if name != "usage-1-of-8" || fmt.Sprint(parts) != "[1 9]" {
		t.Fatalf("unit 1 is %s over %v; want usage-1-of-8 over [1 9]", name, parts)
	}
	if _, parts, _ := a.UnitLayout(5); fmt.Sprint(parts) != "[5]" {
		t.Fatalf("unit 5 covers %v; want [5]", parts)
	}
	stopA, stopB := runSink(t, a), runSink(t, b)
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(t, a, ch, "SELECT count() FROM usage_records"); n != partitions*20 {
			return fmt.Errorf("%d rows, want %d", n, partitions*20)
		}
		if ha, hb := a.Held(), b.Held(); len(ha) == 0 || len(hb) == 0 || len(ha)+len(hb) != MaxUsageUnits+1 {
			return fmt.Errorf("units held: %v and %v; want the %d shared", ha, hb, MaxUsageUnits+1)
		}
		behind, err := a.Behind(ctx)
		if err != nil || len(behind) > 0 {
			return fmt.Errorf("behind: %v %v", behind, err)
		}
		return nil
	})
	stopA()
	stopB()

	// unit 1 as the layout before groups left it: partition 1 written up
	// to its last message (4), partition 9 up to its first (19)
	kv, err := js.KeyValue(ctx, broker.BucketSink)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, key1); err != nil {
		t.Fatal(err)
	}
	for p, done := range map[int]uint64{1: 4, 9: 19} {
		v, _ := json.Marshal(map[string]any{"done": done, "checked": true})
		if _, err := kv.Put(ctx, a.SingleKey(p), v); err != nil {
			t.Fatal(err)
		}
	}
	publishAccepted(t, js, 9, 1, 10, 3)
	reg := prometheus.NewRegistry()
	c := New(js, ch, cfg, reg, testenv.Logger(t))
	stopC := runSink(t, c)
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(t, c, ch, "SELECT count() FROM usage_records"); n != partitions*20+10 {
			return fmt.Errorf("%d rows, want %d", n, partitions*20+10)
		}
		behind, err := c.Behind(ctx)
		if err != nil || len(behind) > 0 {
			return fmt.Errorf("behind: %v %v", behind, err)
		}
		return nil
	})
	stopC()
	// started past 4, the lower: partition 9's two messages (19, 20) read
	// again, their 20 rows left out; from the start (3, 4, 19, 20) it
	// would be 40, from the higher position (past 19) 10
	if skipped := metric(t, reg, "cardmeter_sink_rows_skipped_total"); skipped != 20 {
		t.Fatalf("%v rows read again and left out; want 20 (the unit starts past the lowest old position)", skipped)
	}
	if n := count(t, c, ch, "SELECT uniqExact(partition, src_seq, idx) FROM usage_records"); n != partitions*20+10 {
		t.Fatalf("%d distinct positions in %d rows: a row was inserted twice", n, partitions*20+10)
	}
	for _, p := range []int{1, 9} {
		if _, err := kv.Get(ctx, a.SingleKey(p)); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("partition %d's old position is still there (%v)", p, err)
		}
	}
}

// The migration key of another sink keeps this one waiting while it is
// fresh, and is taken over once it has not been written for the stale
// time (its sink died migrating); then the sink migrates and writes.
func TestStaleMigrationKeyIsTakenOver(t *testing.T) {
	defer SetMigrationTimes(200*time.Millisecond, 3*time.Second)()
	_, js := testenv.JetStream(t)
	ch := testenv.ClickHouse(t)
	ctx := context.Background()
	publishAccepted(t, js, 0, 2, 10, 1)
	kv, err := js.KeyValue(ctx, broker.BucketSink)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, lease.Token("sink-"+ch.Database)+".migrating", []byte("another-host:1:1")); err != nil {
		t.Fatal(err)
	}
	s := New(js, ch, Config{Partitions: 1, FlushInterval: 100 * time.Millisecond}, nil, testenv.Logger(t))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(1500 * time.Millisecond)
	if s.Healthy() == nil {
		t.Fatal("the sink went on while another sink's fresh migration key was there")
	}
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 30*time.Second, func() error {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM usage_records").Scan(&n); err != nil || n != 20 {
			return fmt.Errorf("%d rows (%v), want 20 once the stale key is taken over", n, err)
		}
		return s.Healthy()
	})
}
