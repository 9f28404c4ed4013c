package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/lease"
)

// MaxUsageUnits is the most units the usage is cut into, whatever the
// partitions: with more partitions than this, a unit covers a fixed group
// of them (unit u: every partition p with p % MaxUsageUnits == u), so that
// its blocks stay as large as with this many partitions (ClickHouse's cost
// per row grows as blocks shrink). It is the same for every sink of a
// deployment: the units' positions depend on it.
const MaxUsageUnits = 8

// unit is one share of the sink's work: a partition's usage (or a group
// of partitions'), or the events.
type unit struct {
	id         int
	name       string // "usage-<n>", "usage-<u>-of-<units>", or "events"
	stream     string
	filters    []string
	partitions []int  // the partitions whose usage it writes
	key        string // its position in the sink bucket
	w          writer
}

// position is a unit's key in the sink bucket: how far it is written, and
// the block its owner decided to insert next.
type position struct {
	Done  uint64 `json:"done"`            // every message up to this stream position is in ClickHouse
	First uint64 `json:"first,omitempty"` // the block decided: its first stream position
	Last  uint64 `json:"last,omitempty"`  // and its last; a block is pending while Last > Done
	Epoch uint64 `json:"epoch"`           // the lease epoch of the owner that wrote it
	// Checked: what ClickHouse holds past Done was read back once since
	// the position was made (a new database, an older sink's, a rebuild's
	// rows), so that a block past Done that is not a repeat can go without
	// reading ClickHouse back (a scan of the table, for each unit's start)
	Checked bool `json:"checked,omitempty"`
}

func (p position) pending() bool { return p.Last > p.Done }

// usageUnits is how many units the usage is cut into; unit usageUnits is
// the events.
func (s *Sink) usageUnits() int { return min(s.cfg.Partitions, MaxUsageUnits) }

func (s *Sink) unitName(id int) string {
	switch n := s.usageUnits(); {
	case id == n:
		return "events"
	case n < s.cfg.Partitions:
		// a group of partitions: a name of its own, never read as a
		// single partition's position
		return fmt.Sprintf("usage-%d-of-%d", id, n)
	}
	return "usage-" + strconv.Itoa(id)
}

// unit returns unit id's definition, with a writer of its own (whose
// knowledge of what ClickHouse holds starts empty).
func (s *Sink) unit(id int) unit {
	u := unit{id: id, name: s.unitName(id), key: lease.Token(s.cfg.Consumer) + "." + s.unitName(id)}
	n := s.usageUnits()
	if id == n {
		u.stream, u.filters, u.w = broker.StreamEvents, []string{"cardmeter.events.>"}, &eventsWriter{s: s}
		return u
	}
	u.stream, u.w = broker.StreamAccepted, &usageWriter{s: s}
	for p := id; p < s.cfg.Partitions; p += n {
		u.partitions = append(u.partitions, p)
		u.filters = append(u.filters, broker.AcceptedSubject(p))
	}
	return u
}

// own writes a unit while this instance holds its lease: a life that
// fails is followed by another after a backoff, reading the unit's
// position again.
func (s *Sink) own(ctx context.Context, l *lease.Lease) {
	id := l.Partition
	log := s.log.With(zap.String("unit", s.unitName(id)), zap.Uint64("lease_epoch", l.Epoch))
	s.mu.Lock()
	s.units[id] = &unitStatus{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.units, id)
		s.mu.Unlock()
		s.pending.DeleteLabelValues(s.unitName(id))
		log.Info("unit left", zap.NamedError("cause", context.Cause(ctx)))
	}()
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		started := time.Now()
		err := s.work(ctx, l, s.unit(id), log)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errCrash) {
			s.crash(err)
			return
		}
		if err == nil {
			err = errors.New("the unit stopped")
		}
		s.setFailure(id, err)
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		log.Warn("sink unit failed; starting again", zap.Error(err), zap.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// setFailure records why a unit cannot go on (nil: it goes on), for Healthy.
func (s *Sink) setFailure(id int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.units[id]; st != nil {
		st.failure = err
	}
}

// requestTimeout bounds a request to JetStream for a unit's position.
const requestTimeout = 20 * time.Second

// errNotValid ends a unit's life when its lease is no longer valid.
var errNotValid = errors.New("the unit's lease is not valid: not writing")

// work is one life of a unit: read its position, insert the block decided
// there again if there is one, then read on and insert block after block.
func (s *Sink) work(ctx context.Context, l *lease.Lease, u unit, log *zap.Logger) error {
	pos, rev, err := s.readPosition(ctx, u)
	if err != nil {
		return err
	}
	start := pos.Done + 1
	if pos.pending() {
		start = pos.First
		log.Info("inserting again the block its last owner decided", zap.Uint64("first", pos.First), zap.Uint64("last", pos.Last))
	}
	cons, err := s.js.OrderedConsumer(ctx, u.stream, jetstream.OrderedConsumerConfig{FilterSubjects: u.filters,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: max(start, 1)})
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", u.stream, err)
	}
	// bytes, not messages: a unit's buffer stays near 8 MiB (the largest
	// message ACCEPTED takes) however large its messages
	it, err := cons.Messages(jetstream.PullMaxBytes(8 << 20))
	if err != nil {
		return fmt.Errorf("consuming %s: %w", u.stream, err)
	}
	defer it.Stop()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := make(chan jetstream.Msg, 64)
	go func() {
		defer close(in)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				log.Warn("consumer", zap.Error(err))
				continue
			}
			select {
			case in <- m:
			case <-lctx.Done():
				return
			}
		}
	}()
	s.setFailure(u.id, nil) // this life got going: an earlier failure is over
	f := &filler{s: s, in: in, w: u.w}
	// the first block reads back what ClickHouse holds only when it may
	// hold some of it: a repeat, or a position never checked
	checked := pos.Checked
	check := !checked || pos.pending()
	// pos is what the bucket holds (at revision rev); done is how far this
	// life has inserted, written with the next block, or when the unit
	// falls idle, or at a graceful end
	done := pos.Done
	repeat := pos.pending()
	for {
		upTo := uint64(0)
		if repeat {
			upTo = pos.Last
		}
		b, err := f.fill(ctx, upTo)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return s.leave(ctx, l, u, pos, position{Done: done, Epoch: l.Epoch, Checked: checked}, rev, log)
		}
		if len(b.block) == 0 {
			if repeat && b.passed {
				// the block's messages are gone from the stream (aged out
				// before a new owner came): nothing to insert again
				log.Error("the block to insert again is gone from the stream; going on past it",
					zap.Uint64("first", pos.First), zap.Uint64("last", pos.Last))
				done, repeat = pos.Last, false
			}
			if !repeat && done > pos.Done && l.Valid() {
				// idle: say how far, so that a reader of the positions
				// (and the next owner) need not look at the last block
				settled := position{Done: done, Epoch: l.Epoch, Checked: checked}
				nrev, err := s.writePosition(ctx, u, settled, rev)
				if err != nil {
					return err
				}
				pos, rev = settled, nrev
			}
			continue
		}
		s.mu.Lock()
		if st := s.units[u.id]; st != nil {
			st.pending, st.oldest = b.pending, b.oldest // the oldest message not yet in ClickHouse
		}
		s.mu.Unlock()
		s.pending.WithLabelValues(u.name).Set(float64(b.pending))
		last := b.last
		if repeat {
			s.blocks.Inc()
			check, last = true, pos.Last
		} else {
			if !l.Valid() {
				return errNotValid
			}
			next := position{Done: done, First: b.first, Last: b.last, Epoch: l.Epoch, Checked: checked}
			nrev, err := s.writePosition(ctx, u, next, rev)
			if err != nil {
				return err
			}
			pos, rev = next, nrev
		}
		if err := s.insert(ctx, l, u, b.block, check, log); err != nil {
			return err
		}
		if !b.oldest.IsZero() {
			s.delay.WithLabelValues(u.w.table()).Observe(time.Since(b.oldest).Seconds())
		}
		s.mu.Lock()
		if st := s.units[u.id]; st != nil {
			st.oldest = time.Time{} // in; the next block's first message is the oldest next
		}
		s.mu.Unlock()
		check, checked = false, true
		if s.cfg.AfterInsert != nil {
			if err := s.cfg.AfterInsert(u.stream); err != nil {
				return fmt.Errorf("%w: %w", errCrash, err)
			}
		}
		done, repeat = last, false
	}
}

// insert inserts a block, retrying with backoff while the lease is valid.
// The insert runs on its own context, so that a graceful stop finishes
// the block in hand.
func (s *Sink) insert(ctx context.Context, l *lease.Lease, u unit, block []blockMsg, check bool, log *zap.Logger) error {
	var ins, skip int
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(10*time.Second)), ctx)
	err := backoff.RetryNotify(func() error {
		if !l.Valid() {
			return backoff.Permanent(errNotValid)
		}
		// its own context, so that a stop (or a lease lost) never cuts an
		// insert in the middle: ClickHouse writes the table's parts and
		// then the views', and a cut between them left rows the repeat
		// then finds, without their rollups
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		var err error
		ins, skip, err = u.w.insertBlock(ictx, block, check)
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
		s.setFailure(u.id, err) // this unit's, which another unit's success does not clear
		log.Warn("clickhouse insert failed; retrying", zap.Error(err), zap.Duration("in", d))
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	s.setErr(nil)
	s.setFailure(u.id, nil)
	s.inserted.WithLabelValues(u.w.table()).Add(float64(ins))
	if ins > 0 {
		s.blockRows.WithLabelValues(u.w.table()).Observe(float64(ins))
	}
	s.skipped.WithLabelValues(u.w.table()).Add(float64(skip))
	if skip > 0 {
		log.Info("left out rows ClickHouse already held", zap.Int("rows", skip))
	}
	return nil
}

// leave writes, on a graceful end, how far the unit is inserted, so that
// the next owner need not insert its last block again.
func (s *Sink) leave(ctx context.Context, l *lease.Lease, u unit, pos, now position, rev uint64, log *zap.Logger) error {
	if errors.Is(context.Cause(ctx), errCrash) || errors.Is(context.Cause(ctx), lease.ErrLost) || now.Done <= pos.Done || !l.Valid() {
		return nil // nothing new, or no last word: as a crash, or the unit is another's
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := s.writePosition(ctx, u, now, rev); err != nil {
		log.Warn("writing the unit's position at the end (its next owner inserts the last block again)", zap.Error(err))
	}
	return nil
}

// readPosition reads a unit's position; a unit never written starts where
// an older sink's consumers had acked, or at the start of the stream, and
// that is written as its first position.
func (s *Sink) readPosition(ctx context.Context, u unit) (position, uint64, error) {
	// a deadline of its own: a request whose reply is lost waits for its
	// context, and the unit's lasts as long as the lease
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	e, err := s.pos.Get(ctx, u.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		p := position{Done: s.legacyDone(ctx, u)}
		rev, err := s.writePosition(ctx, u, p, 0)
		return p, rev, err
	case err != nil:
		return position{}, 0, fmt.Errorf("reading the position %s: %w", u.key, err)
	}
	var p position
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return position{}, 0, fmt.Errorf("the position %s is not one: %w", u.key, err)
	}
	return p, e.Revision(), nil
}

// writePosition writes a unit's position by compare-and-set on rev (0:
// the key must not exist): it fails if another owner wrote it meanwhile.
func (s *Sink) writePosition(ctx context.Context, u unit, p position, rev uint64) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	b, _ := json.Marshal(p)
	var nrev uint64
	var err error
	if rev == 0 {
		nrev, err = s.pos.Create(ctx, u.key, b)
	} else {
		nrev, err = s.pos.Update(ctx, u.key, b, rev)
	}
	if err != nil {
		return 0, fmt.Errorf("writing the position %s (another owner may have written it): %w", u.key, err)
	}
	if rev == 0 {
		s.dropLegacyConsumers(ctx, u)
	}
	return nrev, nil
}

// legacyDone is where a unit without a position starts: past what an
// older sink had written of each of its partitions (the lowest of them),
// or at the start of the stream. The first block reads what ClickHouse
// holds, and every block reaching back to it leaves out the rows it holds,
// so starting early only costs time.
func (s *Sink) legacyDone(ctx context.Context, u unit) uint64 {
	if u.stream == broker.StreamEvents {
		floor, _ := s.consumerFloor(ctx, u, broker.StreamEvents, s.cfg.Consumer+"-events")
		return floor
	}
	start := uint64(0)
	for i, p := range u.partitions {
		done, ok := s.partitionDone(ctx, u, p)
		if !ok {
			return 0
		}
		if i == 0 || done < start {
			start = done
		}
	}
	return start
}

// partitionDone is how far an older sink had written partition p's
// usage: a unit of its own in the layout before groups (its position), a
// consumer of its own, or the one usage consumer of the first sinks.
func (s *Sink) partitionDone(ctx context.Context, u unit, p int) (uint64, bool) {
	if len(u.partitions) > 1 {
		if e, err := s.pos.Get(ctx, s.singleKey(p)); err == nil {
			var pos position
			if json.Unmarshal(e.Value(), &pos) == nil {
				s.log.Info("the unit starts where a partition's own unit had written", zap.String("unit", u.name), zap.Int("partition", p), zap.Uint64("seq", pos.Done))
				return pos.Done, true
			}
		}
	}
	if floor, ok := s.consumerFloor(ctx, u, broker.StreamAccepted, fmt.Sprintf("%s-usage-%d", s.cfg.Consumer, p)); ok {
		return floor, true
	}
	return s.consumerFloor(ctx, u, broker.StreamAccepted, s.cfg.Consumer+"-usage")
}

// singleKey is the position key partition p had as a unit of its own.
func (s *Sink) singleKey(p int) string {
	return lease.Token(s.cfg.Consumer) + ".usage-" + strconv.Itoa(p)
}

func (s *Sink) consumerFloor(ctx context.Context, u unit, stream, name string) (uint64, bool) {
	c, err := s.js.Consumer(ctx, stream, name)
	if err != nil {
		return 0, false
	}
	floor := c.CachedInfo().AckFloor.Stream
	s.log.Info("the unit starts where an older sink's consumer had acked", zap.String("unit", u.name), zap.String("consumer", name), zap.Uint64("seq", floor))
	return floor, true
}

// dropLegacyConsumers deletes what an older sink left once the units it
// served have positions: a partition's consumer, or its position as a
// unit of its own, with its unit's first position; the shared consumers
// once every unit has one.
func (s *Sink) dropLegacyConsumers(ctx context.Context, u unit) {
	// only one that is there: a delete the user may not make (another
	// database's consumer on EVENTS) would wait for its deadline
	there := func(stream, name string) bool {
		_, err := s.js.Consumer(ctx, stream, name)
		return err == nil
	}
	drop := func(stream, name string) {
		if !there(stream, name) {
			return
		}
		err := s.js.DeleteConsumer(ctx, stream, name)
		switch {
		case err == nil:
			s.log.Info("deleted an older sink's consumer", zap.String("consumer", name))
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			s.log.Warn("deleting an older sink's consumer", zap.String("consumer", name), zap.Error(err))
		}
	}
	for _, p := range u.partitions {
		drop(broker.StreamAccepted, fmt.Sprintf("%s-usage-%d", s.cfg.Consumer, p))
		if len(u.partitions) > 1 {
			if err := s.pos.Delete(ctx, s.singleKey(p)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				s.log.Warn("deleting a partition's position of the layout before groups", zap.Int("partition", p), zap.Error(err))
			}
		}
	}
	// the shared ones, once every unit has a position: looked at only
	// while one of them is there (else a new database's first start would
	// read every unit's key for each unit)
	if !there(broker.StreamAccepted, s.cfg.Consumer+"-usage") && !there(broker.StreamEvents, s.cfg.Consumer+"-events") {
		return
	}
	for id := 0; id <= s.usageUnits(); id++ {
		if _, err := s.pos.Get(ctx, s.unit(id).key); err != nil {
			return
		}
	}
	drop(broker.StreamAccepted, s.cfg.Consumer+"-usage")
	drop(broker.StreamEvents, s.cfg.Consumer+"-events")
}

// filler cuts a unit's messages into blocks.
type filler struct {
	s     *Sink
	in    <-chan jetstream.Msg
	w     writer
	carry jetstream.Msg // read past the last block's end: the next block's first
}

// filled is a block read.
type filled struct {
	block       []blockMsg
	first, last uint64    // stream positions
	pending     uint64    // messages after the last, as the stream said
	passed      bool      // a message past upTo was read: the block is complete
	oldest      time.Time // when its first message was stored
}

// fill reads a block: until it holds BatchRows rows or the flush interval
// has passed since its first message; or, to repeat a block decided
// before (upTo > 0), exactly up to its last stream position upTo,
// whatever the time and rows. It returns an empty block when ctx ends or
// nothing came within the flush interval.
func (f *filler) fill(ctx context.Context, upTo uint64) (filled, error) {
	var b filled
	rows := 0
	timer := time.NewTimer(f.s.cfg.FlushInterval)
	defer timer.Stop()
	var expire <-chan time.Time
	if upTo == 0 {
		expire = timer.C
	}
	for upTo > 0 || rows < f.s.cfg.BatchRows {
		m := f.carry
		f.carry = nil
		if m == nil {
			var ok bool
			select {
			case m, ok = <-f.in:
				if !ok {
					if ctx.Err() != nil {
						return b, nil
					}
					// the consumer stopped by itself: this life ends, the
					// next reads its position again
					return filled{}, errors.New("the unit's consumer stopped")
				}
			case <-expire:
				return b, nil
			case <-ctx.Done():
				return b, nil
			}
		}
		meta, err := m.Metadata()
		if err != nil {
			return b, fmt.Errorf("sink: %s: %w", m.Subject(), err)
		}
		seq := meta.Sequence.Stream
		if upTo > 0 && seq > upTo {
			f.carry = m
			b.passed = true
			return b, nil
		}
		bm, n, err := f.w.decode(m)
		if err != nil {
			// not a message this sink can read: the unit cannot go past
			// it; it fails, retries, and says so on /readyz
			return b, fmt.Errorf("sink: %s at %d: %w", m.Subject(), seq, err)
		}
		if len(b.block) == 0 {
			b.first, b.oldest = seq, meta.Timestamp
			timer.Reset(f.s.cfg.FlushInterval)
		}
		b.block = append(b.block, bm)
		b.last, b.pending = seq, meta.NumPending
		rows += n
		if upTo > 0 && seq == upTo {
			b.passed = true
			return b, nil
		}
	}
	return b, nil
}

// Behind lists the units whose position has not reached the last message
// of their subjects: none when ClickHouse holds all the log has so far
// (for tests and tools; a unit not yet written counts as behind if its
// subjects hold anything).
func (s *Sink) Behind(ctx context.Context) ([]string, error) {
	kv, err := s.js.KeyValue(ctx, broker.BucketSink)
	if err != nil {
		return nil, err
	}
	var behind []string
	for id := 0; id <= s.usageUnits(); id++ {
		u := s.unit(id)
		st, err := s.js.Stream(ctx, u.stream)
		if err != nil {
			return nil, err
		}
		var last uint64
		if u.stream == broker.StreamEvents {
			last = st.CachedInfo().State.LastSeq
		} else {
			for _, f := range u.filters {
				if m, err := st.GetLastMsgForSubject(ctx, f); err == nil {
					last = max(last, m.Sequence)
				} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
					return nil, err
				}
			}
		}
		var done uint64
		if e, err := kv.Get(ctx, u.key); err == nil {
			var p position
			if err := json.Unmarshal(e.Value(), &p); err != nil {
				return nil, err
			}
			done = p.Done
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, err
		}
		if done < last {
			behind = append(behind, fmt.Sprintf("%s at %d of %d", u.name, done, last))
		}
	}
	return behind, nil
}
