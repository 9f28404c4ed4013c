package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/lanes"
	"github.com/cardmeter/cardmeter/pkg/lease"
)

// replay does the replay a subscription asks for, before its events go on:
// every event stored since a time (its consumer is set back to the first
// of them), or its dead letters, each sent once, each card's in order and
// several cards at once (those taken are removed, the others stay). The
// result is written in the subscription.
func (n *Notifier) replay(ctx context.Context, l *lease.Lease, r *running, consumer string) error {
	sub := r.sub.Load()
	rp := sub.Replay
	res := ReplayResult{ID: rp.ID}
	var err error
	switch {
	case rp.Since != nil:
		res.FromSeq, err = n.replaySince(ctx, sub, consumer, *rp.Since)
	case rp.DeadLetters:
		res.Delivered, res.Left, err = n.replayDead(ctx, l, sub)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, errLeaseLost) || errors.Is(err, lanes.ErrStopped) {
		return err // not done: the unit's next owner does it
	}
	if err != nil {
		res.Error = err.Error()
	}
	res.At = time.Now().UTC()
	if _, uerr := n.store.Update(ctx, sub.ID, func(s *Subscription) error {
		if s.Replay == nil || s.Replay.ID != rp.ID {
			return errNothing // another replay was asked for meanwhile
		}
		s.ReplayDone = &res
		return nil
	}); uerr != nil && !errors.Is(uerr, errNothing) {
		return fmt.Errorf("writing the replay's result: %w", uerr)
	}
	n.log.Info("webhook replay done", zap.String("webhook", sub.ID), zap.String("replay", rp.ID), zap.Int("delivered", res.Delivered),
		zap.Int("left", res.Left), zap.Uint64("from_seq", res.FromSeq), zap.String("error", res.Error))
	return nil
}

// errLeaseLost ends a replay whose unit's lease is no longer valid.
var errLeaseLost = errors.New("the unit's lease is not valid")

// replaySince sets the consumer back to the first of the subscription's
// events stored at or after since: from there every event goes again, in
// order, with its own webhook-id.
func (n *Notifier) replaySince(ctx context.Context, sub *Subscription, consumer string, since time.Time) (uint64, error) {
	oc, err := n.js.OrderedConsumer(ctx, broker.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: sub.FilterSubjects(),
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since, InactiveThreshold: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	m, err := oc.Next(jetstream.FetchMaxWait(2 * time.Second))
	if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
		return 0, nil // nothing stored since: nothing to send again
	}
	if err != nil {
		return 0, err
	}
	meta, err := m.Metadata()
	if err != nil {
		return 0, err
	}
	seq := meta.Sequence.Stream
	if _, err := n.js.ResetConsumerToSequence(ctx, broker.StreamEvents, consumer, seq); err != nil {
		return 0, fmt.Errorf("setting the consumer back to %d: %w", seq, err)
	}
	return seq, nil
}

// replayDead sends each of the subscription's dead letters once: each
// card's oldest first, up to the subscription's Parallel cards at once. One
// taken is removed; the others stay for a later replay.
func (n *Notifier) replayDead(ctx context.Context, l *lease.Lease, sub *Subscription) (delivered, left int, err error) {
	st, err := n.js.Stream(ctx, broker.StreamDead)
	if err != nil {
		return 0, 0, err
	}
	subject := broker.DeadSubject(sub.ID)
	last, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	oc, err := n.js.OrderedConsumer(ctx, broker.StreamDead, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, InactiveThreshold: 5 * time.Second})
	if err != nil {
		return 0, 0, err
	}
	var (
		mu      sync.Mutex
		lastErr error
		stuck   = map[string]bool{} // cards whose letter failed again: their later ones wait behind it
		lost    bool                // the lease: the next owner replays what is left
	)
	consumer := ConsumerName(sub)
	send := func(ctx context.Context, m jetstream.Msg) bool {
		if !l.Valid() {
			mu.Lock()
			lost = true
			mu.Unlock()
			return false
		}
		meta, err := m.Metadata()
		if err != nil {
			return false
		}
		card := subjectToken(m.Headers().Get("Cardmeter-Event-Subject"))
		// a letter of another generation of this id, or one the webhook
		// no longer asks for (its types or account changed): not sent,
		// and removed
		var env envelope
		_ = json.Unmarshal(m.Data(), &env)
		// (a letter without the header is older than it: its types and
		// account are what says whether it is this webhook's)
		if g := m.Headers().Get(headerConsumer); (g != "" && g != consumer) || !sub.Matches(env.Type) ||
			(sub.AccountID != "" && env.Data.AccountID != sub.AccountID) {
			if err := st.DeleteMsg(ctx, meta.Sequence.Stream); err != nil {
				n.log.Warn("removing a dead letter the webhook does not take", zap.Error(err))
			}
			return true
		}
		mu.Lock()
		wait := stuck[card]
		if wait {
			left++
		}
		mu.Unlock()
		if wait {
			return true // its card's earlier letter failed: it stays, in order
		}
		id := m.Headers().Get("webhook-id")
		start := time.Now()
		status, _, perr := n.post(ctx, sub, id, m.Data())
		a := Attempt{EventID: id, Subject: m.Headers().Get("Cardmeter-Event-Subject"), Attempt: 1, At: start, Status: status,
			LatencyMS: float64(time.Since(start).Microseconds()) / 1000, Result: "delivered"}
		if perr == nil {
			if err := st.DeleteMsg(ctx, meta.Sequence.Stream); err != nil {
				n.log.Warn("removing a replayed dead letter (a later replay sends it again)", zap.Error(err))
			}
		} else {
			a.Result, a.Error = "dead", perr.Error()
		}
		n.record(sub.ID, a)
		mu.Lock()
		defer mu.Unlock()
		if perr == nil {
			delivered++
		} else {
			left++
			lastErr = perr
			stuck[card] = true
		}
		return true
	}
	parallel := sub.Parallel
	if parallel == 0 {
		parallel = DefaultParallel
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ln := lanes.New(lctx, parallel, 0, send)
	err = func() error {
		for {
			select {
			case <-ln.Stopped():
				return errLeaseLost
			default:
			}
			m, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				return err
			}
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			if err := ln.Add(lctx, subjectToken(m.Headers().Get("Cardmeter-Event-Subject")), m); err != nil {
				return err
			}
			if meta.Sequence.Stream >= last.Sequence {
				return nil
			}
		}
	}()
	if err != nil {
		cancel()
	}
	ln.Wait()
	mu.Lock()
	defer mu.Unlock()
	switch {
	case lost:
		return delivered, left, errLeaseLost
	case err != nil:
		return delivered, left, err
	case lastErr != nil:
		return delivered, left, fmt.Errorf("%d not taken again, the last: %w", left, lastErr)
	}
	return delivered, left, nil
}
