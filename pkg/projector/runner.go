package projector

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/fold"
	"github.com/cardmeter/cardmeter/pkg/index"
	"github.com/cardmeter/cardmeter/pkg/lease"
)

// errStuck marks a failure no retry gets past: a message of the log this
// build cannot fold, or a checkpoint that is lost or does not fit this
// deployment. The partition still retries (someone may fix it), and the
// process reports itself unhealthy meanwhile.
var errStuck = errors.New("cannot go on")

// runner is one life of a partition: acquire, restore, fold, checkpoint,
// release.
type runner struct {
	p     *Projector
	pt    *partition
	lease *lease.Lease
	log   *zap.Logger

	store  *store
	idx    *index.Index
	folder *fold.Folder

	last     uint64 // last sequence folded (published or not)
	unsaved  int    // messages folded since the last checkpoint began
	lastSave time.Time
	pending  []*nats.Msg // messages to publish before the next applied mark
	counted  []counted   // what each pending message counts for in the metrics
	census   time.Time   // when the last census was taken

	saving  sync.WaitGroup // the checkpoint being stored
	busy    atomic.Bool    // set while a checkpoint is being stored
	saveErr atomic.Pointer[error]
}

func (r *runner) life(ctx context.Context) error {
	objs, err := r.p.js.ObjectStore(ctx, broker.BucketSnapshot)
	if err != nil {
		return fmt.Errorf("opening the checkpoint store: %w", err)
	}
	kv, err := r.p.js.KeyValue(ctx, broker.BucketCheckpoints)
	if err != nil {
		return fmt.Errorf("opening the checkpoint manifests: %w", err)
	}
	r.store = &store{p: r.p, part: r.pt.id, objs: objs, kv: kv, log: r.log}
	// a life acquires the manifest (bumping its epoch) and collects
	// garbage only while the lease is valid: a stale owner's new life
	// must not fence out, or delete the objects of, the partition's owner
	if err := r.fenced(ctx); err != nil {
		return err
	}
	if err := r.store.acquire(ctx); err != nil {
		return err
	}
	if err := r.restore(ctx); err != nil {
		return err
	}
	defer r.idx.Close()
	if err := r.fenced(ctx); err != nil {
		return err
	}
	r.store.collectGarbage(ctx)
	r.p.m.ready.Inc()
	defer r.p.m.ready.Dec()
	return r.run(ctx)
}

// restore reads the checkpoint the manifest names: the index's segments
// (fetched when missing here) and the state's pieces, one at a time, with
// at most RestoreConcurrency partitions restoring at once.
func (r *runner) restore(ctx context.Context) error {
	select {
	case r.p.restore <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.p.restore }()
	start := time.Now()
	m := r.store.m
	if m.Partitions != 0 && m.Partitions != r.p.cfg.Partitions {
		return fmt.Errorf("%w: the checkpoint was made with %d partitions, configured %d", errStuck, m.Partitions, r.p.cfg.Partitions)
	}
	idx, err := index.Open(filepath.Join(r.p.cfg.DataDir, fmt.Sprintf("index-p%d", r.pt.id)), m.Segments, r.store.fetchSegment(ctx))
	if err != nil {
		return err
	}
	state, err := r.store.readState(ctx)
	if err != nil {
		idx.Close()
		return err
	}
	r.idx = idx
	r.folder = &fold.Folder{Partition: r.pt.id, State: state, Index: idx}
	// the interval runs from when the checkpoint was stored, not from this
	// restore: a partition that restarts again and again (each life
	// shorter than the interval) still checkpoints once it has folded
	// what came since, so what the next restart folds again does not grow
	// with each crash
	r.last, r.lastSave = m.Seq, time.Now()
	if !m.Saved.IsZero() && m.Saved.Before(r.lastSave) { // (another instance's clock may be ahead)
		r.lastSave = r.lastSave.Add(-r.lastSave.Sub(m.Saved)) // as long ago, on the monotonic clock
	}
	r.pt.mu.Lock()
	r.pt.state, r.pt.applied, r.pt.checkpointAt = state, m.Seq, m.Saved
	if m.Saved.IsZero() { // a manifest from before Saved, or none yet
		r.pt.checkpointAt = time.Now()
	}
	// A partition that could not fold a message stays unready, stuck and
	// failing /healthz until a life folds past it (the flush clears it), so
	// that it does not flap ready between retries.
	if r.pt.stuckAt == 0 || m.Seq >= r.pt.stuckAt {
		r.pt.ready, r.pt.failure, r.pt.stuck, r.pt.stuckAt = true, nil, false, 0
	}
	close(r.pt.progress)
	r.pt.progress = make(chan struct{})
	r.pt.mu.Unlock()
	entries, disk, _ := idx.Stats()
	r.p.m.restoreSeconds.Observe(time.Since(start).Seconds())
	r.p.m.indexEntries.WithLabelValues(fmt.Sprint(r.pt.id)).Set(float64(entries))
	r.log.Info("partition restored", zap.Uint64("seq", m.Seq), zap.Uint64("epoch", m.Epoch), zap.Int("cards", state.Cards()),
		zap.Int("index_entries", entries), zap.Int64("index_bytes", disk), zap.Int("pieces", len(m.Base)+len(m.Deltas)),
		zap.Duration("took", time.Since(start)))
	return nil
}

func (r *runner) run(ctx context.Context) error {
	// the reader goroutine ends with this life, not only with the process
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
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
			case <-lctx.Done():
				return
			}
		}
	}()
	defer it.Stop()
	r.takeCensus()
	tick := time.NewTicker(min(r.p.cfg.CheckpointInterval, time.Second))
	defer tick.Stop()
	for {
		if perr := r.saveErr.Load(); perr != nil {
			r.saving.Wait()
			return *perr
		}
		select {
		case m, ok := <-msgs:
			if !ok {
				return r.shutdown(ctx)
			}
			if err := r.fold(m); err != nil {
				return r.failed(err)
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
						return r.failed(err)
					}
				default:
					break drain
				}
			}
			if err := r.flush(ctx); err != nil {
				if ctx.Err() != nil {
					return r.shutdown(ctx)
				}
				return r.failed(err)
			}
			if r.unsaved >= r.p.cfg.CheckpointEvery {
				r.checkpoint(ctx)
			}
		case <-tick.C:
			if r.unsaved > 0 && time.Since(r.lastSave) >= r.p.cfg.CheckpointInterval {
				r.checkpoint(ctx)
			}
			if time.Since(r.census) >= r.p.cfg.CensusInterval {
				r.takeCensus()
			}
		case <-ctx.Done():
			return r.shutdown(ctx)
		}
	}
}

// takeCensus counts the partition's cards, in the fold's goroutine.
func (r *runner) takeCensus() {
	r.pt.mu.Lock()
	c := r.folder.State.Census()
	r.pt.census, r.pt.censusAt = &c, time.Now()
	r.pt.mu.Unlock()
	r.census = time.Now()
}

// counted is what a published message counts for: an event's type, and
// for stops and resumes the reason (an accepted-usage message: nothing).
type counted struct{ typ, reason string }

// count adds the events just published to the metrics, but for those the
// log already had (a replay after a restart publishes them again; one
// older than the stream's duplicate window is counted again).
func (r *runner) count(stored []bool) {
	for i, c := range r.counted {
		if c.typ == "" || !stored[i] {
			continue
		}
		r.p.m.emitted.WithLabelValues(c.typ).Inc()
		switch c.typ {
		case "cardmeter.card.stopped.v1":
			r.p.m.stops.WithLabelValues(c.reason).Inc()
		case "cardmeter.card.resumed.v1":
			r.p.m.resumes.WithLabelValues(c.reason).Inc()
		}
	}
}

// failed ends the life after a failure to fold or publish: the checkpoint
// being stored finishes or fails first, then the next life restores it.
func (r *runner) failed(err error) error {
	r.saving.Wait()
	return err
}

// shutdown checkpoints what is published, with a fresh context: the run's
// is already cancelled.
func (r *runner) shutdown(ctx context.Context) error {
	r.saving.Wait() // even "crashing": the index closes after this
	if r.p.cfg.CrashOnStop {
		return nil
	}
	if errors.Is(context.Cause(ctx), lease.ErrLost) {
		// another instance may hold the partition already: no last word
		r.log.Warn("lease lost: the partition stops without a final checkpoint")
		return nil
	}
	if !r.p.nc.IsConnected() {
		r.log.Warn("no final checkpoint: not connected to NATS; the next start folds from the last one")
		return nil
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if r.unsaved > 0 && r.saveErr.Load() == nil {
		r.checkpoint(fctx)
		r.saving.Wait()
	}
	if r.saveErr.Load() == nil {
		r.store.release(fctx)
	}
	return nil
}

// fenced waits while the lease is not valid (its renewal is late): the
// partition publishes nothing meanwhile. It returns the context's cause
// once the lease is lost or the life ends.
func (r *runner) fenced(ctx context.Context) error {
	for !r.lease.Valid() {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
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
	r.p.m.foldDelay.Observe(time.Since(meta.Timestamp).Seconds())
	r.pt.mu.Lock()
	r.pt.pending, r.pt.foldedStored = meta.NumPending, meta.Timestamp
	before := r.folder.Lookups()
	out, err := r.folder.Fold(m.Subject(), seq, m.Data())
	if err == nil && out.Verdicts != nil {
		r.pt.chunks.put(seq, out.Verdicts)
	}
	if err == nil && out.Decision != nil {
		r.pt.inputs.put(seq, out.Decision)
	}
	r.pt.mu.Unlock()
	r.p.m.lookups.Add(float64(r.folder.Lookups() - before))
	if err != nil {
		if errors.Is(err, fold.ErrIndex) {
			return err // the state may be part-applied: the next life restores it
		}
		r.pt.mu.Lock()
		r.pt.stuckAt = seq
		r.pt.mu.Unlock()
		return fmt.Errorf("%w: %w", errStuck, err)
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
		r.counted = append(r.counted, counted{typ: env.Type, reason: env.Data.Reason})
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
		r.counted = append(r.counted, counted{})
	}
	r.last = seq
	r.unsaved++
	return nil
}

// flush publishes what the folded messages emitted and waits for every ack,
// then marks them applied.
//
// A crash before the acks leaves applied (and the checkpoint) behind: the
// restart folds the same messages again, emits the same events with the
// same ids, and JetStream's duplicate window drops the ones it has.
func (r *runner) flush(ctx context.Context) error {
	if err := r.fenced(ctx); err != nil {
		return err
	}
	if len(r.pending) > 0 {
		// stored[i]: some try's ack said the log took message i anew (a
		// failed try may store some; the next one then hears "duplicate")
		stored := make([]bool, len(r.pending))
		op := func() error {
			if !r.lease.Valid() {
				return errors.New("the lease's renewal is late: publishing waits") // retried; a lost lease ends the context
			}
			futs := make([]jetstream.PubAckFuture, 0, len(r.pending))
			for _, m := range r.pending {
				f, err := r.p.js.PublishMsgAsync(m)
				if err != nil {
					return err
				}
				futs = append(futs, f)
			}
			for i, f := range futs {
				select {
				case ack := <-f.Ok():
					stored[i] = stored[i] || !ack.Duplicate
				case err := <-f.Err():
					return err
				case <-ctx.Done():
					return backoff.Permanent(ctx.Err())
				}
			}
			return nil
		}
		bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(5*time.Second)), ctx)
		failed := false
		err := backoff.RetryNotify(op, bo, func(err error, d time.Duration) {
			r.log.Warn("publishing emitted events failed; retrying", zap.Error(err), zap.Duration("in", d))
			r.p.m.publishRetries.Inc()
			r.pt.mu.Lock()
			r.pt.failure, failed = fmt.Errorf("publishing emitted events: %w", err), true
			r.pt.mu.Unlock()
		})
		if err != nil {
			return err
		}
		r.p.m.published.Add(float64(len(r.pending)))
		r.count(stored)
		r.pending, r.counted = r.pending[:0], r.counted[:0]
		if failed {
			r.pt.mu.Lock()
			r.pt.failure = nil
			r.pt.mu.Unlock()
		}
	}
	r.pt.mu.Lock()
	if r.pt.stuckAt != 0 && r.last >= r.pt.stuckAt {
		r.pt.ready, r.pt.failure, r.pt.stuck, r.pt.stuckAt = true, nil, false, 0
	}
	if r.pt.applied != r.last {
		r.pt.applied = r.last
		close(r.pt.progress)
		r.pt.progress = make(chan struct{})
	}
	r.pt.mu.Unlock()
	return nil
}

// checkpoint takes what changed since the last checkpoint, in the fold's
// goroutine (the fold pauses for that): the record ids counted since (the
// index holds them in memory from now on) and the cards that changed, or
// every card when a new base is due. Storing it goes on in the background,
// one checkpoint at a time, while folding goes on.
//
// A crash before the manifest names it keeps the previous checkpoint: the
// restart rolls the index back to that one's segments and folds the
// messages since again, which the fold and the event ids make harmless. A
// checkpoint that cannot be stored ends this life (a delta leans on the
// one before it), and the next restores the last one stored.
func (r *runner) checkpoint(ctx context.Context) {
	if r.busy.Load() {
		return // the previous one is still being stored; try again later
	}
	if !r.lease.Valid() {
		return // the lease's renewal is late: nothing leaves this instance
	}
	r.pt.mu.Lock()
	seq := r.pt.applied
	if seq != r.last {
		// folded messages whose effects are not published: the state is
		// ahead of seq, and a checkpoint of it would count them twice
		r.pt.mu.Unlock()
		return
	}
	state := r.folder.State
	job := saveJob{seq: seq, base: r.store.baseDue(), floor: state.IndexFloor()}
	var err error
	if job.base {
		job.pieces, err = state.MarshalBase(r.p.cfg.CardsPerPiece)
	} else {
		job.pieces, job.cards, err = state.MarshalDelta(r.p.cfg.CardsPerPiece)
	}
	if err == nil {
		r.idx.Freeze(state.TakeIDs(nil)) // the delta listed them; the index holds them from now on
	}
	r.pt.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("encoding a checkpoint: %w", err)
		r.saveErr.Store(&err)
		return
	}
	r.unsaved, r.lastSave = 0, time.Now()
	r.busy.Store(true)
	r.saving.Add(1)
	go func() {
		defer r.saving.Done()
		defer r.busy.Store(false)
		// a stop lets the checkpoint in flight finish (shutdown waits for
		// it), rather than failing it and the final one with it
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if err := r.store.save(sctx, r.idx, job); err != nil {
			if ctx.Err() == nil {
				r.log.Warn("checkpoint not stored; this life ends and the next restores the last one", zap.Error(err))
			}
			r.saveErr.Store(&err)
			return
		}
		entries, _, _ := r.idx.Stats()
		r.p.m.indexEntries.WithLabelValues(fmt.Sprint(r.pt.id)).Set(float64(entries))
	}()
}
