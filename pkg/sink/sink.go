// Package sink writes what the projector accepted and emitted into
// ClickHouse: a unit at a time (each partition's usage, and the events),
// shared among the running sinks by leases, in blocks whose range is
// written down before they are inserted, so that any repeat is the same
// block.
package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cardmeter/cardmeter/pkg/status"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/event"
	"github.com/cardmeter/cardmeter/pkg/lease"
)

// Config configures the sink.
type Config struct {
	Partitions int // partitions in the deployment
	// Instance is this sink among those running, for the leases: unique
	// among them. Default: the host name, the process id and a count.
	Instance      string
	BatchRows     int           // rows in one insert at most; default 200000
	FlushInterval time.Duration // a block waits at most this long; default 1 s
	// Consumer names this database's positions in the sink bucket (and
	// the consumers of older sinks, which it takes over and deletes);
	// default "sink-" + the database.
	Consumer string
	// AfterInsert, when set, runs between a block's insert and the next
	// step; an error ends Run there with that error, as a crash would:
	// no position written, the block redone by the next owner (tests).
	AfterInsert func(stream string) error
}

// Sink writes ACCEPTED and EVENTS into ClickHouse. Its work comes in units,
// each shared among the running sinks by a lease (pkg/lease, role "sink"),
// so that one instance at a time writes it: the usage of each partition
// (ACCEPTED's accepted.<n>), and the events (all of EVENTS, one more
// unit). A unit's owner reads its subjects with an ordered consumer and
// inserts them in blocks.
//
// A block is decided before it is inserted: its first and last stream
// position go, by compare-and-set, into the unit's key in the sink bucket
// (which also says how far the unit is written), and only then is it
// inserted. A new owner (after a crash, a hand-over or a stale owner
// losing the partition) first inserts that same block again, the same
// messages in the same order, and goes on past it. So a repeat is always
// the same block:
//
//   - on one ClickHouse server, the repeat reads which of the block's rows
//     ClickHouse holds (every row carries its log position) and leaves
//     them out, so a crash between insert and position, or a half-done
//     insert, inserts nothing twice;
//   - on replicated tables (--clickhouse-cluster), a replica that does not
//     have the block yet receives exactly the block it would deduplicate,
//     so the repeat is dropped there too, and the summed rollups fed by
//     the insert are not inflated.
//
// An owner inserts only while its lease is valid, and the compare-and-set
// fails for one that lost its unit while it was paused: it stops there.
type Sink struct {
	cfg  Config
	js   jetstream.JetStream
	ch   ClickHouseConfig
	log  *zap.Logger
	conn driver.Conn

	leases atomic.Pointer[lease.Manager]
	pos    jetstream.KeyValue
	crash  context.CancelCauseFunc // AfterInsert's error ends Run as a crash

	mu      sync.Mutex
	lastErr error
	units   map[int]*unitStatus // the units this instance holds

	inserted  *prometheus.CounterVec
	skipped   *prometheus.CounterVec
	failures  prometheus.Counter
	up        prometheus.Gauge
	pending   *prometheus.GaugeVec
	unitsHeld prometheus.Gauge
	blocks    prometheus.Counter
	blockRows *prometheus.HistogramVec
	delay     *prometheus.HistogramVec
}

// unitStatus is what Healthy and Pending know of a unit held.
type unitStatus struct {
	pending uint64    // messages after the last one read, as of the last block
	failure error     // the last life's, while it is retried
	oldest  time.Time // when the block being written's first message was stored (zero: none in hand)
}

// instances tells apart the sinks of one process (tests run several).
var instances atomic.Int64

// New returns a sink; it connects and works in Run.
func New(js jetstream.JetStream, ch ClickHouseConfig, cfg Config, reg prometheus.Registerer, log *zap.Logger) *Sink {
	if cfg.Partitions <= 0 {
		panic("sink: Config.Partitions is required: the log's, from broker.Ensure or broker.Check")
	}
	if cfg.BatchRows == 0 {
		cfg.BatchRows = 200000
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "sink-" + ch.Database
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s:%d:%d", host, os.Getpid(), instances.Add(1))
	}
	s := &Sink{cfg: cfg, js: js, ch: ch, log: log, lastErr: errors.New("connecting to ClickHouse"), units: map[int]*unitStatus{},
		inserted:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_sink_rows_inserted_total", Help: "Rows inserted into ClickHouse, by table."}, []string{"table"}),
		skipped:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_sink_rows_skipped_total", Help: "Rows of repeated blocks ClickHouse already held, by table."}, []string{"table"}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_sink_insert_failures_total", Help: "Failed ClickHouse inserts (retried)."}),
		up:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_sink_clickhouse_up", Help: "1 while the last ClickHouse operation succeeded."}),
		pending:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cardmeter_sink_pending_messages", Help: "Messages waiting for the sink, by unit this instance holds."}, []string{"unit"}),
		unitsHeld: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_sink_units_held", Help: "Units (partitions' usage, and the events) this instance writes now."}),
		blocks:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_sink_blocks_repeated_total", Help: "Blocks a previous owner had decided, inserted again exactly."}),
		blockRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cardmeter_sink_block_rows", Help: "Rows per insert into ClickHouse, by table (small blocks cost ClickHouse more per row).",
			Buckets: prometheus.ExponentialBuckets(100, 2, 12)}, []string{"table"}),
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cardmeter_sink_delay_seconds",
			Help:    "From a block's first message's storage (the fold's output, or the event) to its rows in ClickHouse, by table.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 11)}, []string{"table"}),
	}
	if reg != nil {
		reg.MustRegister(s.inserted, s.skipped, s.failures, s.up, s.pending, s.unitsHeld, s.blocks, s.blockRows, s.delay)
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cardmeter_sink_backlog_age_seconds",
			Help: "How long the oldest message read and not yet in ClickHouse has waited (the most over this instance's units; 0: none in hand). It grows while ClickHouse refuses."},
			s.backlogAge))
	}
	return s
}

// Pending is how many messages wait for the units this instance holds, as
// of their last blocks.
func (s *Sink) Pending() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, u := range s.units {
		n += u.pending
	}
	return n
}

// Healthy returns why the sink cannot write now, or nil: ClickHouse out of
// reach, the units not yet taken, or a unit retrying after a failure.
func (s *Sink) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		return s.lastErr
	}
	mgr := s.leases.Load()
	if mgr == nil {
		return errors.New("sink starting")
	}
	select {
	case <-mgr.Started():
	default:
		return errors.New("sink taking its partitions")
	}
	ids := make([]int, 0, len(s.units))
	for id := range s.units {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		if err := s.units[id].failure; err != nil {
			return fmt.Errorf("sink %s is retrying after: %w", s.unitName(id), err)
		}
	}
	return nil
}

// Held lists the units this instance writes now: the usage's units
// (partitions, or groups of them when there are more than MaxUsageUnits),
// and the last unit for the events.
func (s *Sink) Held() []int {
	if mgr := s.leases.Load(); mgr != nil {
		return mgr.Held()
	}
	return nil
}

func (s *Sink) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
	if err == nil {
		s.up.Set(1)
	} else {
		s.up.Set(0)
	}
}

// connect opens ClickHouse and applies the schema, retrying with backoff
// until it answers: the backlog waits in JetStream meanwhile, and the
// units are left to the sinks that can write.
func (s *Sink) connect(ctx context.Context) error {
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(10*time.Second)), ctx)
	return backoff.RetryNotify(func() error {
		conn, err := Open(ctx, s.ch)
		if err != nil {
			return err
		}
		if err := s.migrate(ctx, conn); err != nil {
			conn.Close()
			return err
		}
		s.conn = conn
		return nil
	}, bo, func(err error, d time.Duration) {
		s.setErr(err)
		s.log.Warn("clickhouse not ready; retrying", zap.Error(err), zap.Duration("in", d))
	})
}

// migrate applies the schema, one sink at a time: a migration may drop a
// view and create it anew, and another sink inserting in between would
// leave its rows out of the rollups. The sink that migrates holds the key
// <database>.migrating in the sink bucket, writes it again every
// migrationRefresh while it works, and deletes it after; the others wait,
// then find every migration applied. A key not written for
// migrationStale (its sink died migrating) is taken over, at once if it
// is this instance's own (a previous life's).
func (s *Sink) migrate(ctx context.Context, conn driver.Conn) error {
	kv, err := s.js.KeyValue(ctx, broker.BucketSink)
	if err != nil {
		return fmt.Errorf("the position bucket %s: %w", broker.BucketSink, err)
	}
	key := lease.Token(s.cfg.Consumer) + ".migrating"
	for {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		rev, err := kv.Create(rctx, key, []byte(s.cfg.Instance))
		cancel()
		if err == nil {
			return s.migrateHolding(ctx, conn, kv, key, rev)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("taking the migration key: %w", err)
		}
		rctx, cancel = context.WithTimeout(ctx, requestTimeout)
		if e, err := kv.Get(rctx, key); err == nil && (string(e.Value()) == s.cfg.Instance || time.Since(e.Created()) > migrationStale) {
			s.log.Warn("taking over the migration key of a sink that did not finish", zap.String("holder", string(e.Value())))
			_ = kv.Delete(rctx, key, jetstream.LastRevision(e.Revision()))
		}
		cancel()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// How often a migrating sink writes its key again, and how long a key not
// written is taken for its sink's death (variables for tests).
var (
	migrationRefresh = 20 * time.Second
	migrationStale   = 2 * time.Minute
)

// migrateHolding migrates while holding the key (at revision rev),
// refreshing it, and deletes it after.
func (s *Sink) migrateHolding(ctx context.Context, conn driver.Conn, kv jetstream.KeyValue, key string, rev uint64) error {
	done := make(chan struct{})
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		t := time.NewTicker(migrationRefresh)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			nrev, err := kv.Update(rctx, key, []byte(s.cfg.Instance), rev)
			cancel()
			if err == nil {
				rev = nrev // read after the refresher has ended
			}
			if err != nil {
				s.log.Warn("writing the migration key again", zap.Error(err))
			}
		}
	}()
	err := Migrate(ctx, conn, s.ch)
	close(done)
	<-refreshed
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	_ = kv.Delete(dctx, key, jetstream.LastRevision(rev)) // else it is taken over when stale
	return err
}

// Run connects to ClickHouse, then takes this instance's share of the
// units and writes them until ctx ends; each unit then ends with its
// position written and its lease given back. A unit's failure is retried,
// never final. Run returns an error only when it cannot start (or an
// AfterInsert hook failed).
func (s *Sink) Run(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return nil // ctx ended
	}
	defer s.conn.Close()
	s.setErr(nil)
	leases, err := s.js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		return fmt.Errorf("sink: the lease bucket %s: %w", broker.BucketLeases, err)
	}
	if s.pos, err = s.js.KeyValue(ctx, broker.BucketSink); err != nil {
		return fmt.Errorf("sink: the position bucket %s: %w", broker.BucketSink, err)
	}
	mgr, err := lease.New(ctx, leases, lease.Config{Role: broker.RoleSink, Instance: s.cfg.Instance, Partitions: s.usageUnits() + 1,
		OnChange: func(held []int) {
			s.unitsHeld.Set(float64(len(held)))
			names := make([]string, len(held))
			for i, id := range held {
				names[i] = s.unitName(id)
			}
			s.log.Info("units held", zap.Strings("units", names))
		}}, s.log.Named("lease"))
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	s.leases.Store(mgr)
	ctx, crash := context.WithCancelCause(ctx)
	defer crash(nil)
	s.crash = crash
	if err := mgr.Run(ctx, s.own); err != nil {
		return err
	}
	if err := context.Cause(ctx); errors.Is(err, errCrash) {
		return err
	}
	return nil
}

// errCrash wraps an AfterInsert hook's error.
var errCrash = errors.New("sink stopped by its AfterInsert hook")

// writer turns a block of messages into one insert.
type writer interface {
	// decode reads a message, and counts the rows it holds (to size blocks).
	decode(m jetstream.Msg) (blockMsg, int, error)
	// insertBlock inserts the block, leaving out rows ClickHouse already
	// holds; with reload it first reads the highest position ClickHouse
	// holds. It returns the rows inserted and skipped.
	insertBlock(ctx context.Context, block []blockMsg, reload bool) (int, int, error)
	table() string
}

// ---- usage

type usageWriter struct {
	s    *Sink
	held map[uint16]uint64 // the highest position ClickHouse held when last read, by partition
}

func (u *usageWriter) table() string { return "usage_records" }

// blockMsg is one decoded message of a block.
type blockMsg struct {
	accepted *event.Accepted
	env      *event.Envelope
}

func (u *usageWriter) decode(m jetstream.Msg) (blockMsg, int, error) {
	// a view: the message's bytes stay as they are until the block is
	// inserted and dropped, and the rows' strings need no copies
	a, err := event.UnmarshalAcceptedView(m.Data())
	if err != nil {
		return blockMsg{}, 0, err
	}
	return blockMsg{accepted: a}, len(a.Rows), nil
}

func (u *usageWriter) insertBlock(ctx context.Context, block []blockMsg, reload bool) (int, int, error) {
	span := spans{}
	rows := 0
	for _, bm := range block {
		span.add(uint16(bm.accepted.Partition), bm.accepted.Seq)
		rows += len(bm.accepted.Rows)
	}
	skip, err := u.s.alreadyHeld(ctx, "usage_records", &u.held, reload, span)
	if err != nil {
		return 0, 0, err
	}
	b, err := u.s.conn.PrepareBatch(ctx, usageInsert)
	if err != nil {
		return 0, 0, err
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	cols := newUsageColumns(rows)
	n := 0
	for _, bm := range block {
		n += cols.add(bm.accepted, skip)
	}
	if n == 0 {
		return 0, len(skip), nil
	}
	if err := cols.appendTo(b); err != nil {
		return 0, 0, err
	}
	return n, len(skip), b.Send()
}

// spans holds the lowest and highest position of a block's rows, by
// partition.
type spans map[uint16][2]uint64

func (sp spans) add(partition uint16, seq uint64) {
	r, ok := sp[partition]
	if !ok {
		r = [2]uint64{seq, seq}
	}
	sp[partition] = [2]uint64{min(r[0], seq), max(r[1], seq)}
}

// alreadyHeld returns the rows of a block (its spans) that table already
// holds. *held is the highest position ClickHouse held per partition, read
// again when reload is set or it is unknown; only a span reaching back to
// it can hold such rows, so a block past it costs no query.
func (s *Sink) alreadyHeld(ctx context.Context, table string, held *map[uint16]uint64, reload bool, span spans) (map[rowKey]bool, error) {
	if reload || *held == nil {
		h, err := s.held(ctx, table)
		if err != nil {
			return nil, err
		}
		*held = h
	}
	skip := map[rowKey]bool{}
	for p, r := range span {
		if r[0] > (*held)[p] {
			continue
		}
		have, err := s.existing(ctx, table, p, r[0], min(r[1], (*held)[p]))
		if err != nil {
			return nil, err
		}
		for k := range have {
			skip[k] = true
		}
	}
	return skip, nil
}

// held reads the highest position ClickHouse holds per partition.
func (s *Sink) held(ctx context.Context, table string) (map[uint16]uint64, error) {
	rows, err := s.conn.Query(ctx, "SELECT partition, max(src_seq) FROM "+table+" GROUP BY partition")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint16]uint64{}
	for rows.Next() {
		var p uint16
		var seq uint64
		if err := rows.Scan(&p, &seq); err != nil {
			return nil, err
		}
		out[p] = seq
	}
	return out, rows.Err()
}

// existing reads the keys of a partition's rows with positions in
// [from, to] that ClickHouse holds.
func (s *Sink) existing(ctx context.Context, table string, partition uint16, from, to uint64) (map[rowKey]bool, error) {
	rows, err := s.conn.Query(ctx, "SELECT src_seq, idx FROM "+table+" WHERE partition = ? AND src_seq >= ? AND src_seq <= ?", partition, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[rowKey]bool{}
	for rows.Next() {
		var k rowKey
		if err := rows.Scan(&k.seq, &k.idx); err != nil {
			return nil, err
		}
		k.partition = partition
		out[k] = true
	}
	return out, rows.Err()
}

// ---- events

type eventsWriter struct {
	s    *Sink
	held map[uint16]uint64 // the highest position ClickHouse held, by partition
}

func (e *eventsWriter) table() string { return "card_events" }

func (e *eventsWriter) decode(m jetstream.Msg) (blockMsg, int, error) {
	env := &event.Envelope{}
	if err := json.Unmarshal(m.Data(), env); err != nil {
		return blockMsg{}, 0, err
	}
	if _, err := eventKey(env.ID); err != nil {
		return blockMsg{}, 0, err
	}
	return blockMsg{env: env}, 1, nil
}

func (e *eventsWriter) insertBlock(ctx context.Context, block []blockMsg, reload bool) (int, int, error) {
	keys := make([]rowKey, len(block))
	span := spans{}
	for i, bm := range block {
		k, err := eventKey(bm.env.ID)
		if err != nil {
			return 0, 0, backoff.Permanent(err)
		}
		keys[i] = k
		span.add(k.partition, k.seq)
	}
	skip, err := e.s.alreadyHeld(ctx, "card_events", &e.held, reload, span)
	if err != nil {
		return 0, 0, err
	}
	b, err := e.s.conn.PrepareBatch(ctx, eventsInsert)
	if err != nil {
		return 0, 0, err
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	n, skipped := 0, 0
	for i, bm := range block {
		if skip[keys[i]] {
			skipped++
			continue
		}
		if err := appendEvent(b, keys[i], bm.env); err != nil {
			return 0, 0, err
		}
		n++
	}
	if n == 0 {
		return 0, skipped, nil
	}
	return n, skipped, b.Send()
}

// Status is this instance's units for the status bucket.
func (s *Sink) Status() status.Sink {
	s.mu.Lock()
	up := s.lastErr == nil
	s.mu.Unlock()
	units := s.Held()
	if units == nil {
		units = []int{}
	}
	return status.Sink{Units: units, Pending: s.Pending(), ClickHouseUp: up}
}

// backlogAge is how long the oldest message in hand has waited, in seconds.
func (s *Sink) backlogAge() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var age float64
	for _, u := range s.units {
		if !u.oldest.IsZero() {
			age = max(age, time.Since(u.oldest).Seconds())
		}
	}
	return age
}
