package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/event"
)

// Config configures the sink.
type Config struct {
	Partitions    int           // partitions in the deployment
	Owned         []int         // the partitions this instance writes; nil: all. The owner of partition 0 also writes EVENTS.
	BatchRows     int           // rows in one insert at most; default 200000
	FlushInterval time.Duration // a block waits at most this long; default 1 s
	AckWait       time.Duration // JetStream redelivers what is not acked within this; default 30 s
	Consumer      string        // durable consumer name prefix; default "sink-" + the database
	// AfterInsert, when set, runs between a block's insert and its ack; an
	// error ends Run there without the ack, as a crash would (tests).
	AfterInsert func(stream string) error
}

// Sink consumes ACCEPTED and EVENTS and inserts them into ClickHouse:
// one writer for the usage of every partition it owns and one for the
// events, in blocks, acking after the insert.
//
// Exactly once in effect: every row carries its log position. At start,
// after a failed insert and when JetStream delivers a message again, each
// writer reads the highest position ClickHouse holds; before inserting a
// block that reaches back to it, it reads which of the block's rows
// ClickHouse already has and leaves them out. So a crash between insert and
// ack (or a half-done insert) inserts nothing twice when JetStream delivers
// the block again, and a sink starting on a rebuilt database skips what
// the rebuild wrote.
type Sink struct {
	cfg  Config
	js   jetstream.JetStream
	ch   ClickHouseConfig
	log  *zap.Logger
	conn driver.Conn

	mu        sync.Mutex
	lastErr   error
	pendingBy map[string]uint64 // messages waiting, by consumer

	inserted *prometheus.CounterVec
	skipped  *prometheus.CounterVec
	failures prometheus.Counter
	up       prometheus.Gauge
	pending  *prometheus.GaugeVec
}

// New returns a sink; it connects and works in Run.
func New(js jetstream.JetStream, ch ClickHouseConfig, cfg Config, reg prometheus.Registerer, log *zap.Logger) *Sink {
	if cfg.Partitions <= 0 {
		panic("sink: Config.Partitions is required: the log's, from broker.Ensure or broker.Check")
	}
	if cfg.Owned == nil {
		for i := 0; i < cfg.Partitions; i++ {
			cfg.Owned = append(cfg.Owned, i)
		}
	}
	if cfg.BatchRows == 0 {
		cfg.BatchRows = 200000
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "sink-" + ch.Database
	}
	s := &Sink{cfg: cfg, js: js, ch: ch, log: log, lastErr: errors.New("connecting to ClickHouse"),
		inserted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_sink_rows_inserted_total", Help: "Rows inserted into ClickHouse, by table."}, []string{"table"}),
		skipped:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_sink_rows_skipped_total", Help: "Redelivered rows ClickHouse already held, by table."}, []string{"table"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_sink_insert_failures_total", Help: "Failed ClickHouse inserts (retried)."}),
		up:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_sink_clickhouse_up", Help: "1 while the last ClickHouse operation succeeded."}),
		pending:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cardmeter_sink_pending_messages", Help: "Messages waiting for the sink, by consumer."}, []string{"consumer"}),
	}
	if reg != nil {
		reg.MustRegister(s.inserted, s.skipped, s.failures, s.up, s.pending)
	}
	return s
}

// Pending is how many messages wait for the sink, as of the last block.
func (s *Sink) Pending() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, v := range s.pendingBy {
		n += v
	}
	return n
}

// Healthy returns why the sink cannot write now, or nil.
func (s *Sink) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
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
// until it answers: the backlog waits in JetStream meanwhile.
func (s *Sink) connect(ctx context.Context) error {
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(10*time.Second)), ctx)
	return backoff.RetryNotify(func() error {
		conn, err := Open(ctx, s.ch)
		if err != nil {
			return err
		}
		if err := Migrate(ctx, conn); err != nil {
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

// Run consumes until ctx ends.
func (s *Sink) Run(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return nil // ctx ended
	}
	defer s.conn.Close()
	s.setErr(nil)
	type loop struct {
		name, stream string
		filters      []string
		w            writer
	}
	// one usage writer for every partition this instance owns, so that
	// ClickHouse gets few large inserts (its cost per row halves from
	// blocks of 20,000 rows to blocks of 200,000); the events writer with
	// partition 0
	usage := loop{name: s.cfg.Consumer + "-usage", stream: broker.StreamAccepted, w: &usageWriter{s: s}}
	loops := []loop{usage}
	for _, p := range s.cfg.Owned {
		loops[0].filters = append(loops[0].filters, broker.AcceptedSubject(p))
		if p == 0 {
			loops = append(loops, loop{name: s.cfg.Consumer + "-events", stream: broker.StreamEvents, filters: []string{"cardmeter.events.>"}, w: &eventsWriter{s: s}})
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conss := make([]jetstream.Consumer, len(loops))
	for i, l := range loops {
		cc := jetstream.ConsumerConfig{
			Durable: l.name, FilterSubjects: l.filters, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: s.cfg.AckWait, MaxAckPending: 100000,
		}
		if l.stream == broker.StreamAccepted {
			if start := s.legacyStart(ctx, l.name); start > 0 {
				cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
				s.log.Info("the usage consumer starts where the older per-partition ones had acked", zap.Uint64("seq", start))
			}
		}
		cons, err := s.js.CreateOrUpdateConsumer(ctx, l.stream, cc)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while starting
			}
			return fmt.Errorf("sink: consumer %s: %w", l.name, err)
		}
		conss[i] = cons
	}
	s.dropLegacyConsumers(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, len(loops))
	for i, l := range loops {
		cons := conss[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.loop(ctx, cons, l.name, l.stream, l.w); err != nil {
				errs <- err
				cancel() // as a crash: the others stop too
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// legacyStart is where a new usage consumer named name should start when
// an older sink's per-partition consumers cover every owned partition: past
// the lowest of their ack floors, rather than at the start of the stream
// (which the held-position check would also get right, slowly). 0: from
// the start, or the consumer exists already.
func (s *Sink) legacyStart(ctx context.Context, name string) uint64 {
	if _, err := s.js.Consumer(ctx, broker.StreamAccepted, name); err == nil {
		return 0
	}
	var floor uint64
	for i, p := range s.cfg.Owned {
		c, err := s.js.Consumer(ctx, broker.StreamAccepted, fmt.Sprintf("%s-usage-%d", s.cfg.Consumer, p))
		if err != nil {
			return 0
		}
		f := c.CachedInfo().AckFloor.Stream
		if i == 0 || f < floor {
			floor = f
		}
	}
	return floor + 1
}

// dropLegacyConsumers deletes the per-partition usage consumers that sinks
// before one writer per instance used ("<prefix>-usage-<p>"): the usage
// consumer has replaced them, and its held-position check leaves out what
// they had inserted.
func (s *Sink) dropLegacyConsumers(ctx context.Context) {
	for _, p := range s.cfg.Owned {
		name := fmt.Sprintf("%s-usage-%d", s.cfg.Consumer, p)
		err := s.js.DeleteConsumer(ctx, broker.StreamAccepted, name)
		switch {
		case err == nil:
			s.log.Info("deleted a per-partition usage consumer of an older sink", zap.String("consumer", name))
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			s.log.Warn("deleting an older sink's consumer", zap.String("consumer", name), zap.Error(err))
		}
	}
}

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

func (s *Sink) loop(ctx context.Context, cons jetstream.Consumer, name, stream string, w writer) error {
	log := s.log.With(zap.String("consumer", name))
	check := true // at start, the block may reach back into what ClickHouse holds: read how far
	for ctx.Err() == nil {
		msgs, block, err := s.fill(ctx, cons, w)
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			continue
		}
		if meta, err := msgs[len(msgs)-1].Metadata(); err == nil {
			s.pending.WithLabelValues(name).Set(float64(meta.NumPending))
			s.mu.Lock()
			if s.pendingBy == nil {
				s.pendingBy = map[string]uint64{}
			}
			s.pendingBy[name] = meta.NumPending
			s.mu.Unlock()
		}
		// Insert, then ack. A crash between the two (or a half-done
		// insert) re-delivers the block; the check before the next insert
		// leaves out what ClickHouse already has, so nothing is inserted
		// twice. The insert runs on its own context, so a graceful stop
		// finishes the block in hand.
		// A message delivered before went to a sink that may have inserted
		// it and died before its ack: check what ClickHouse holds.
		for _, m := range msgs {
			if meta, err := m.Metadata(); err == nil && meta.NumDelivered > 1 {
				check = true
			}
		}
		var ins, skip int
		bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(10*time.Second)), ctx)
		err = backoff.RetryNotify(func() error {
			ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			var err error
			ins, skip, err = w.insertBlock(ictx, block, check)
			if err != nil {
				check = true // it may have half happened
				var perm *backoff.PermanentError
				if !errors.As(err, &perm) {
					s.failures.Inc()
				}
			}
			return err
		}, bo, func(err error, d time.Duration) {
			s.setErr(err)
			log.Warn("clickhouse insert failed; retrying", zap.Error(err), zap.Duration("in", d))
			for _, m := range msgs {
				_ = m.InProgress() // keep the block ours while we retry
			}
		})
		if err != nil {
			for _, m := range msgs {
				_ = m.Nak() // stopping with the block not inserted: hand it back at once
			}
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		check = false
		s.setErr(nil)
		s.inserted.WithLabelValues(w.table()).Add(float64(ins))
		s.skipped.WithLabelValues(w.table()).Add(float64(skip))
		if skip > 0 {
			log.Info("left out rows ClickHouse already held", zap.Int("rows", skip))
		}
		if s.cfg.AfterInsert != nil {
			if err := s.cfg.AfterInsert(stream); err != nil {
				return err
			}
		}
		// Each message is acked on its own: with a cumulative ack, a later
		// message would also ack an earlier one that a dead sink held and
		// never inserted. A lost ack only re-delivers, which the check mends.
		for _, m := range msgs {
			if err := m.Ack(); err != nil {
				log.Warn("ack", zap.Error(err))
				break
			}
		}
	}
	return nil
}

// fill fetches messages until the block holds BatchRows rows or the flush
// interval has passed since its first message.
func (s *Sink) fill(ctx context.Context, cons jetstream.Consumer, w writer) ([]jetstream.Msg, []blockMsg, error) {
	var msgs []jetstream.Msg
	var block []blockMsg
	rows := 0
	deadline := time.Now().Add(s.cfg.FlushInterval)
	for rows < s.cfg.BatchRows && ctx.Err() == nil {
		wait := time.Until(deadline)
		if len(msgs) == 0 {
			wait = s.cfg.FlushInterval
		} else if wait <= 0 {
			break
		}
		// ask for as many messages as should fill the block, going by the
		// rows per message seen so far (one at first)
		want := 1
		if len(msgs) > 0 {
			want = max(1, (s.cfg.BatchRows-rows)/max(1, rows/len(msgs)))
		}
		batch, err := cons.Fetch(min(1000, want), jetstream.FetchMaxWait(max(wait, 10*time.Millisecond)))
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.log.Warn("fetch", zap.Error(err))
			time.Sleep(200 * time.Millisecond)
			continue
		}
		got := 0
		for m := range batch.Messages() {
			bm, n, err := w.decode(m)
			if err != nil {
				// not a message this sink can read: it would stall the
				// partition; stop and say so, as the projector does
				return nil, nil, fmt.Errorf("sink: %s: %w", m.Subject(), err)
			}
			msgs = append(msgs, m)
			block = append(block, bm)
			rows += n
			got++
		}
		if got == 0 && len(msgs) > 0 {
			break
		}
	}
	return msgs, block, nil
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
