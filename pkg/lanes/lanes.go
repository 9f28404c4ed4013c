// Package lanes hands messages to a handler in order per key (a card's
// events one after another) and up to a bound of keys at once: the
// delivery shape of the notifier and the actuator.
package lanes

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Handler handles one message; false ends its lane: the messages after it
// in the lane are dropped unacknowledged (they come back, in order, to the
// consumer's next reader).
type Handler func(ctx context.Context, m jetstream.Msg) bool

// Lanes keeps each key's messages in a lane, drained by one goroutine at a
// time, with at most Parallel lanes going at once.
type Lanes struct {
	handle Handler
	mu     sync.Mutex
	lanes  map[string][]jetstream.Msg // present while a goroutine drains it
	slots  chan struct{}
	wg     sync.WaitGroup
	// InHand, if set, is told how many messages came in (+) and went (-).
	InHand func(delta int)
}

// New makes lanes of at most parallel keys at once.
func New(parallel int, handle Handler) *Lanes {
	return &Lanes{handle: handle, lanes: map[string][]jetstream.Msg{}, slots: make(chan struct{}, max(parallel, 1))}
}

func (l *Lanes) inHand(d int) {
	if l.InHand != nil {
		l.InHand(d)
	}
}

// Add queues m in key's lane, starting the lane when it is not going; it
// waits for a slot when Parallel lanes are going, and returns ctx's error
// if ctx ends meanwhile.
func (l *Lanes) Add(ctx context.Context, key string, m jetstream.Msg) error {
	l.inHand(1)
	l.mu.Lock()
	if q, busy := l.lanes[key]; busy {
		l.lanes[key] = append(q, m)
		l.mu.Unlock()
		return nil
	}
	l.lanes[key] = []jetstream.Msg{m}
	l.mu.Unlock()
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		l.mu.Lock()
		l.inHand(-len(l.lanes[key]))
		delete(l.lanes, key)
		l.mu.Unlock()
		return ctx.Err()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() { <-l.slots }()
		for {
			l.mu.Lock()
			q := l.lanes[key]
			if len(q) == 0 {
				delete(l.lanes, key)
				l.mu.Unlock()
				return
			}
			m := q[0]
			l.lanes[key] = q[1:]
			l.mu.Unlock()
			ok := l.handle(ctx, m)
			l.inHand(-1)
			if !ok {
				l.mu.Lock()
				l.inHand(-len(l.lanes[key]))
				delete(l.lanes, key)
				l.mu.Unlock()
				return
			}
		}
	}()
	return nil
}

// Wait waits for every lane to end.
func (l *Lanes) Wait() { l.wg.Wait() }
