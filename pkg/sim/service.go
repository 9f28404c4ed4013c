package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// Job is a simulation as the simulations bucket keeps it (a day), under
// its id: the API writes it queued, the simulator running with its
// progress, then done with its result or failed with why.
type Job struct {
	ID       string  `json:"id"`
	Status   string  `json:"status"` // queued, running, done, failed
	Request  Request `json:"request"`
	Created  string  `json:"created"`
	Finished string  `json:"finished,omitempty"`
	// Read of Total: the log messages of the account's partition read so far
	Read   uint64  `json:"read"`
	Total  uint64  `json:"total"`
	Result *Result `json:"result,omitempty"`
	Error  string  `json:"error,omitempty"`
	// Simulator is the instance that took the job: if it restarts
	// before the job ends, it marks the job failed
	Simulator string `json:"simulator,omitempty"`
	Updated   string `json:"updated,omitempty"`
}

// MaxJobBytes bounds a job as the bucket keeps it (NATS carries a
// message of 1 MiB at most): a result past it lists fewer cards.
const MaxJobBytes = 900 << 10

// Job statuses.
const (
	StatusQueued  = "queued"
	StatusRunning = "running"
	StatusDone    = "done"
	StatusFailed  = "failed"
)

// MaxCards is how many cards a finished job lists (those whose outcome
// differs most first); its totals count them all.
const MaxCards = 1000

// ErrHistoryGone: the log no longer holds the start of the partition's
// history, so no replay can know the account's state as of the period.
var ErrHistoryGone = errors.New("the log no longer holds the partition's whole history (its first messages aged out): a simulation needs it")

// Replay feeds the retained log of a partition, from its first message to
// its last as of the call, to the simulator; progress is called now and
// then with the messages read and their total.
func Replay(ctx context.Context, js jetstream.JetStream, partition int, s *Simulator, progress func(read, total uint64)) error {
	stream, err := js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.FirstSeq > 1 {
		return ErrHistoryGone
	}
	last := info.State.LastSeq
	cons, err := js.OrderedConsumer(ctx, broker.StreamMeter, jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.PartitionFilter(partition)}})
	if err != nil {
		return err
	}
	var read, total uint64
	tick := time.Now()
	for {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			if meta.Sequence.Stream > last {
				return nil // what came after the request
			}
			read++
			total = read + meta.NumPending
			if err := s.Apply(m.Subject(), m.Data()); err != nil {
				return fmt.Errorf("log message %d: %w", meta.Sequence.Stream, err)
			}
			if progress != nil && time.Since(tick) > time.Second {
				progress(read, total)
				tick = time.Now()
			}
			if meta.NumPending == 0 || meta.Sequence.Stream == last {
				if progress != nil {
					progress(read, total)
				}
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			if read > 0 && read < total {
				return fmt.Errorf("the log ended after %d of its %d messages", read, total)
			}
			return nil // the partition has nothing
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Serve runs the simulations the API asks for (broker.SimulateSubject),
// one at a time, until ctx ends. It runs in a role that may read the log
// (the projector's).
func Serve(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, partitions int, instance string, log *zap.Logger) error {
	// the bucket comes with `cardmeter setup`: an upgraded deployment whose
	// setup has not run yet waits for it (and says so) rather than fail
	var kv jetstream.KeyValue
	warned := false
	err := backoff.Retry(func() error {
		var err error
		if kv, err = js.KeyValue(ctx, broker.BucketSimulations); err != nil && !warned && ctx.Err() == nil {
			log.Warn("no simulations bucket: simulations wait for `cardmeter setup` to make it", zap.Error(err))
			warned = true
		}
		return err
	}, backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0)), ctx))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	abandon(ctx, kv, instance, log)
	queue := make(chan Job, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case job := <-queue:
				runJob(ctx, js, kv, partitions, job, log)
				if ctx.Err() != nil {
					return
				}
			}
		}
	}()
	sub, err := nc.QueueSubscribe(broker.SimulateSubject, "simulators", func(m *nats.Msg) {
		var job Job
		if err := json.Unmarshal(m.Data, &job); err != nil || job.ID == "" {
			_ = m.Respond([]byte(`{"accepted":false,"error":"not a simulation job"}`))
			return
		}
		// (the subscription's callbacks run one at a time: only the worker
		// takes from the queue, so a queue with room keeps it)
		if len(queue) == cap(queue) {
			_ = m.Respond([]byte(`{"accepted":false,"error":"busy: 16 simulations wait already"}`))
			return
		}
		job.Simulator = instance
		b, _ := json.Marshal(job)
		_, _ = kv.Put(ctx, job.ID, b) // queued here, before the worker can mark it running: a restart here fails it
		queue <- job
		_ = m.Respond([]byte(`{"accepted":true}`))
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	wg.Wait()
	return nil
}

// abandon fails the jobs this instance had taken when it stopped: they
// will not end otherwise.
func abandon(ctx context.Context, kv jetstream.KeyValue, instance string, log *zap.Logger) {
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return // none, or the bucket unreadable: nothing to mend now
	}
	for key := range keys.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var job Job
		if json.Unmarshal(e.Value(), &job) != nil || job.Simulator != instance || (job.Status != StatusQueued && job.Status != StatusRunning) {
			continue
		}
		job.Status, job.Error = StatusFailed, "the simulator ("+instance+") stopped before it ended: file it again"
		job.Finished = time.Now().UTC().Format(time.RFC3339)
		b, _ := json.Marshal(job)
		if _, err := kv.Update(ctx, key, b, e.Revision()); err == nil {
			log.Warn("a simulation abandoned by a restart", zap.String("simulation", job.ID))
		}
	}
}

func runJob(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, partitions int, job Job, log *zap.Logger) {
	put := func() {
		job.Updated = time.Now().UTC().Format(time.RFC3339)
		b, _ := json.Marshal(job)
		if len(b) > MaxJobBytes && job.Result != nil {
			// list fewer cards until it fits (the totals count them all)
			for len(b) > MaxJobBytes && len(job.Result.Cards) > 0 {
				keep := len(job.Result.Cards) / 2
				job.Result.CardsTruncated += len(job.Result.Cards) - keep
				job.Result.Cards = job.Result.Cards[:keep]
				b, _ = json.Marshal(job)
			}
		}
		pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := kv.Put(pctx, job.ID, b); err != nil {
			log.Warn("writing a simulation's state", zap.String("simulation", job.ID), zap.Error(err))
		}
	}
	s, err := New(job.Request)
	if err == nil {
		job.Status = StatusRunning
		put()
		start := time.Now()
		err = Replay(ctx, js, broker.Partition(job.Request.AccountID, partitions), s, func(read, total uint64) {
			job.Read, job.Total = read, total
			put()
		})
		if err == nil {
			err = s.Err()
		}
		log.Info("simulation", zap.String("simulation", job.ID), zap.String("account", job.Request.AccountID),
			zap.Uint64("messages", job.Read), zap.Duration("took", time.Since(start)), zap.Error(err))
	}
	job.Finished = time.Now().UTC().Format(time.RFC3339)
	if err != nil {
		job.Status, job.Error = StatusFailed, err.Error()
	} else {
		r := s.Result()
		Trim(&r, MaxCards)
		job.Status, job.Result = StatusDone, &r
	}
	put()
}

// Trim keeps the n cards whose simulated outcome differs most from their
// actual one (by the money, then the stops), in that order.
func Trim(r *Result, n int) {
	diff := func(c CardResult) int64 {
		d := c.Actual.TotalFen - c.Simulated.TotalFen
		if d < 0 {
			d = -d
		}
		return d
	}
	slices.SortStableFunc(r.Cards, func(a, b CardResult) int {
		switch da, db := diff(a), diff(b); {
		case da != db:
			if da > db {
				return -1
			}
			return 1
		}
		return len(b.Simulated.Stops) - len(a.Simulated.Stops)
	})
	if len(r.Cards) > n {
		r.CardsTruncated = len(r.Cards) - n
		r.Cards = r.Cards[:n]
	}
}
