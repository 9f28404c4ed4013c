// Package projector folds the log into card state: one writer per
// partition, in stream order, with the pure card package. It publishes what
// the fold emits, snapshots state with the last applied sequence, resumes
// from the snapshot after a restart, and answers card reads.
package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
)

// Config configures a projector.
type Config struct {
	Partitions       int           // partitions in the deployment
	Owned            []int         // the partitions this instance folds; nil: all
	SnapshotEvery    int           // snapshot after this many applied messages
	SnapshotInterval time.Duration // or after this long with unsnapshotted messages
	MaxQueryWait     time.Duration // bound on a read's min_position wait
	// CrashOnStop makes Run end as a crash would: no flush, no final
	// snapshot. Tests use it to show that a crash loses and doubles nothing.
	CrashOnStop bool
}

func (c *Config) defaults() {
	if c.Partitions == 0 {
		c.Partitions = broker.DefaultTopology.Partitions
	}
	if c.Owned == nil {
		for i := 0; i < c.Partitions; i++ {
			c.Owned = append(c.Owned, i)
		}
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 50000
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.MaxQueryWait == 0 {
		c.MaxQueryWait = 5 * time.Second
	}
}

// Projector runs the partitions it owns. Create it with New and call Run.
type Projector struct {
	cfg   Config
	nc    *nats.Conn
	js    jetstream.JetStream
	log   *zap.Logger
	parts map[int]*partition
}

// New returns a projector; it does nothing until Run.
func New(nc *nats.Conn, js jetstream.JetStream, cfg Config, log *zap.Logger) *Projector {
	cfg.defaults()
	p := &Projector{cfg: cfg, nc: nc, js: js, log: log, parts: map[int]*partition{}}
	for _, id := range cfg.Owned {
		p.parts[id] = &partition{id: id, progress: make(chan struct{})}
	}
	return p
}

// partition is the state of one partition and its progress. mu guards
// state, applied and progress; the fold loop is the only writer.
type partition struct {
	id       int
	mu       sync.Mutex
	state    *card.Partition
	applied  uint64        // last METER sequence whose effects are published
	progress chan struct{} // closed and replaced when applied moves
	ready    bool
	halted   error
	pending  uint64                    // log messages of the partition not yet delivered, as of the last one
	chunks   map[uint64]*ChunkVerdicts // recent usage chunks' verdicts, by sequence
	chunkQ   []uint64                  // their order, for eviction
}

// ChunkVerdicts counts what the fold made of the records of one usage chunk.
type ChunkVerdicts struct {
	Accepted      int `json:"accepted"`
	Late          int `json:"late"`
	Duplicate     int `json:"duplicate"`
	Conflict      int `json:"conflict"`
	UnknownCard   int `json:"unknown_card"`
	TooLate       int `json:"too_late"`
	CardCancelled int `json:"card_cancelled"`
}

// Add counts one verdict.
func (c *ChunkVerdicts) Add(s card.UsageStatus) {
	switch s {
	case card.Accepted:
		c.Accepted++
	case card.Late:
		c.Late++
	case card.Duplicate:
		c.Duplicate++
	case card.Conflict:
		c.Conflict++
	case card.UnknownCard:
		c.UnknownCard++
	case card.TooLate:
		c.TooLate++
	case card.CardCancelled:
		c.CardCancelled++
	}
}

// Sum adds another chunk's counts.
func (c *ChunkVerdicts) Sum(o *ChunkVerdicts) {
	c.Accepted += o.Accepted
	c.Late += o.Late
	c.Duplicate += o.Duplicate
	c.Conflict += o.Conflict
	c.UnknownCard += o.UnknownCard
	c.TooLate += o.TooLate
	c.CardCancelled += o.CardCancelled
}

// keptChunkVerdicts is how many recent chunks' verdicts a partition keeps
// for batch answers (POST /v1/usage?wait=true) to read.
const keptChunkVerdicts = 50000

// rememberChunk keeps a chunk's verdicts; callers hold mu.
func (pt *partition) rememberChunk(seq uint64, v *ChunkVerdicts) {
	if pt.chunks == nil {
		pt.chunks = map[uint64]*ChunkVerdicts{}
	}
	if _, ok := pt.chunks[seq]; !ok {
		pt.chunkQ = append(pt.chunkQ, seq)
	}
	pt.chunks[seq] = v
	if len(pt.chunkQ) > keptChunkVerdicts {
		delete(pt.chunks, pt.chunkQ[0])
		pt.chunkQ = pt.chunkQ[1:]
	}
}

// Run folds every owned partition until ctx ends, then flushes and
// snapshots each one. It returns the first partition's fatal error.
func (p *Projector) Run(ctx context.Context) error {
	stream, err := p.js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return fmt.Errorf("projector: %w", err)
	}
	snaps, err := p.js.ObjectStore(ctx, broker.BucketSnapshot)
	if err != nil {
		return fmt.Errorf("projector: %w", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(p.parts))
	for _, pt := range p.parts {
		sub, err := p.nc.QueueSubscribe(broker.QuerySubject(pt.id), "projector", func(m *nats.Msg) { p.answer(ctx, stream, pt, m) })
		if err != nil {
			return fmt.Errorf("projector: subscribing to queries: %w", err)
		}
		defer sub.Unsubscribe() //nolint:errcheck // shutting down
		wg.Add(1)
		go func(pt *partition) {
			defer wg.Done()
			r := &runner{p: p, pt: pt, stream: stream, snaps: snaps, log: p.log.With(zap.Int("partition", pt.id))}
			if err := r.run(ctx); err != nil && ctx.Err() == nil {
				pt.mu.Lock()
				pt.halted = err
				pt.mu.Unlock()
				r.log.Error("partition halted", zap.Error(err))
				errs <- fmt.Errorf("partition %d: %w", pt.id, err)
			}
		}(pt)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Ready reports whether every partition has restored its snapshot and
// started folding, and none has halted.
func (p *Projector) Ready() error {
	for _, pt := range p.parts {
		pt.mu.Lock()
		ready, halted := pt.ready, pt.halted
		pt.mu.Unlock()
		if halted != nil {
			return fmt.Errorf("partition %d halted: %w", pt.id, halted)
		}
		if !ready {
			return fmt.Errorf("partition %d is restoring", pt.id)
		}
	}
	return nil
}

// Applied is the last METER sequence partition part has applied and whose
// effects are published.
func (p *Projector) Applied(part int) uint64 {
	pt := p.parts[part]
	if pt == nil {
		return 0
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.applied
}

// Lag is how many log messages the partitions have not yet folded: those
// waiting in JetStream as of the last delivered one, plus those delivered
// and not yet folded.
func (p *Projector) Lag() uint64 {
	var n uint64
	for _, pt := range p.parts {
		pt.mu.Lock()
		n += pt.pending
		pt.mu.Unlock()
	}
	return n
}

// snapshotHeader precedes the state in a snapshot object.
type snapshotHeader struct {
	Seq        uint64 `json:"seq"`
	Partitions int    `json:"partitions"`
}

func snapshotName(part int) string { return fmt.Sprintf("partition-%d", part) }

type runner struct {
	p      *Projector
	pt     *partition
	stream jetstream.Stream
	snaps  jetstream.ObjectStore
	log    *zap.Logger

	last      uint64 // last sequence folded (published or not)
	unsnapped int
	lastSnap  time.Time
	folder    *Folder
	pending   []*nats.Msg    // messages to publish before the next applied mark
	putting   sync.WaitGroup // a snapshot being written
	busy      atomic.Bool    // set while a snapshot is being written
}

func (r *runner) restore(ctx context.Context) error {
	b, err := r.snaps.GetBytes(ctx, snapshotName(r.pt.id))
	state := card.NewPartition()
	var seq uint64
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
	case err != nil:
		return fmt.Errorf("reading snapshot: %w", err)
	default:
		head, body, ok := strings.Cut(string(b), "\n")
		var h snapshotHeader
		if !ok || json.Unmarshal([]byte(head), &h) != nil {
			return errors.New("snapshot has no header")
		}
		if h.Partitions != r.p.cfg.Partitions {
			return fmt.Errorf("snapshot was made with %d partitions, configured %d", h.Partitions, r.p.cfg.Partitions)
		}
		if state, err = card.UnmarshalSnapshot([]byte(body)); err != nil {
			return err
		}
		seq = h.Seq
	}
	r.pt.mu.Lock()
	r.pt.state, r.pt.applied, r.pt.ready = state, seq, true
	r.pt.mu.Unlock()
	r.folder = &Folder{Partition: r.pt.id, State: state}
	r.last, r.lastSnap = seq, time.Now()
	r.log.Info("partition restored", zap.Uint64("seq", seq), zap.Int("cards", state.Cards()))
	return nil
}

func (r *runner) run(ctx context.Context) error {
	if err := r.restore(ctx); err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.PartitionFilter(r.pt.id)}}
	if r.last > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.last+1
	}
	cons, err := r.p.js.OrderedConsumer(ctx, broker.StreamMeter, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return fmt.Errorf("consuming: %w", err)
	}
	msgs := make(chan jetstream.Msg, 1024)
	go func() {
		defer close(msgs)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				r.log.Warn("consumer", zap.Error(err))
				continue
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer it.Stop()
	snapTick := time.NewTicker(r.p.cfg.SnapshotInterval)
	defer snapTick.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return r.shutdown()
			}
			if err := r.fold(m); err != nil {
				return err
			}
			// Take what is already waiting, then publish it all at once:
			// batches grow under load, and a lone message goes out at once.
		drain:
			for n := 0; n < 4096; n++ {
				select {
				case m, ok := <-msgs:
					if !ok {
						break drain
					}
					if err := r.fold(m); err != nil {
						return err
					}
				default:
					break drain
				}
			}
			if err := r.flush(ctx); err != nil {
				return r.shutdownErr(err)
			}
			if r.unsnapped >= r.p.cfg.SnapshotEvery {
				r.snapshot(ctx)
			}
		case <-snapTick.C:
			if r.unsnapped > 0 && time.Since(r.lastSnap) >= r.p.cfg.SnapshotInterval {
				r.snapshot(ctx)
			}
		case <-ctx.Done():
			return r.shutdown()
		}
	}
}

func (r *runner) shutdownErr(err error) error {
	if errors.Is(err, context.Canceled) {
		return r.shutdown()
	}
	return err
}

// shutdown snapshots what is published, with a fresh context: the run's
// context is already cancelled.
func (r *runner) shutdown() error {
	if r.p.cfg.CrashOnStop {
		return nil
	}
	r.putting.Wait()
	if !r.p.nc.IsConnected() {
		r.log.Warn("no final snapshot: not connected to NATS; the next start replays from the last one")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r.unsnapped > 0 {
		r.snapshot(ctx)
		r.putting.Wait()
	}
	return nil
}

// fold applies one log message to the state and queues what it emits.
func (r *runner) fold(m jetstream.Msg) error {
	meta, err := m.Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	seq := meta.Sequence.Stream
	if seq <= r.last {
		return nil // a redelivery of what is folded already
	}
	r.pt.mu.Lock()
	r.pt.pending = meta.NumPending
	out, err := r.folder.Fold(m.Subject(), seq, m.Data())
	if err == nil && out.Verdicts != nil {
		r.pt.rememberChunk(seq, out.Verdicts)
	}
	r.pt.mu.Unlock()
	if err != nil {
		return err
	}
	for i := range out.Events {
		env := &out.Events[i]
		b, err := env.Marshal()
		if err != nil {
			return err
		}
		msg := nats.NewMsg(broker.EventSubject(env.SubjectKind(), env.Subject))
		msg.Data = b
		msg.Header.Set(jetstream.MsgIDHeader, env.ID)
		r.pending = append(r.pending, msg)
	}
	if out.Accepted != nil {
		b, err := out.Accepted.Marshal()
		if err != nil {
			return err
		}
		msg := nats.NewMsg(broker.AcceptedSubject(r.pt.id))
		msg.Data = b
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("acc-%d-%d", r.pt.id, seq))
		r.pending = append(r.pending, msg)
	}
	r.last = seq
	r.unsnapped++
	return nil
}

// flush publishes what the folded messages emitted and waits for every ack,
// then marks them applied.
//
// A crash before the acks leaves applied (and the snapshot) behind: the
// restart folds the same messages again, emits the same events with the
// same ids, and JetStream's duplicate window drops the ones it has.
func (r *runner) flush(ctx context.Context) error {
	if len(r.pending) > 0 {
		op := func() error {
			futs := make([]jetstream.PubAckFuture, 0, len(r.pending))
			for _, m := range r.pending {
				f, err := r.p.js.PublishMsgAsync(m)
				if err != nil {
					return err
				}
				futs = append(futs, f)
			}
			for _, f := range futs {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return err
				case <-ctx.Done():
					return backoff.Permanent(ctx.Err())
				}
			}
			return nil
		}
		bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0)), ctx)
		err := backoff.RetryNotify(op, bo, func(err error, d time.Duration) {
			r.log.Warn("publishing emitted events failed; retrying", zap.Error(err), zap.Duration("in", d))
		})
		if err != nil {
			return err
		}
		r.pending = r.pending[:0]
	}
	r.pt.mu.Lock()
	if r.pt.applied != r.last {
		r.pt.applied = r.last
		close(r.pt.progress)
		r.pt.progress = make(chan struct{})
	}
	r.pt.mu.Unlock()
	return nil
}

// snapshot stores the state with the applied sequence. The state is
// encoded here, in the fold's goroutine (the fold pauses for that), and
// written to the object store in the background, so folding goes on while
// JetStream stores it. A crash before the write completes keeps the older
// snapshot: the restart folds more messages again, which the fold and the
// event ids make harmless.
func (r *runner) snapshot(ctx context.Context) {
	if r.busy.Load() {
		return // the previous one is still being written; try again later
	}
	r.pt.mu.Lock()
	seq := r.pt.applied
	if seq != r.last {
		// folded messages whose effects are not published: the state is
		// ahead of seq, and a snapshot of it would count them twice
		r.pt.mu.Unlock()
		return
	}
	body, err := r.pt.state.MarshalSnapshot()
	r.pt.mu.Unlock()
	if err != nil {
		r.log.Error("marshalling snapshot", zap.Error(err))
		return
	}
	head, _ := json.Marshal(snapshotHeader{Seq: seq, Partitions: r.p.cfg.Partitions})
	buf := make([]byte, 0, len(head)+1+len(body))
	buf = append(append(append(buf, head...), '\n'), body...)
	r.unsnapped, r.lastSnap = 0, time.Now()
	r.busy.Store(true)
	r.putting.Add(1)
	go func() {
		defer r.putting.Done()
		defer r.busy.Store(false)
		start := time.Now()
		if _, err := r.snaps.PutBytes(context.WithoutCancel(ctx), snapshotName(r.pt.id), buf); err != nil {
			r.log.Warn("writing snapshot", zap.Error(err))
			return
		}
		r.log.Info("snapshot written", zap.Uint64("seq", seq), zap.Int("bytes", len(buf)), zap.Duration("took", time.Since(start)))
	}()
}
