// Package lanes hands messages to a handler in order per key (a card's
// events one after another) and up to a bound of keys at once: the
// delivery shape of the notifier and the actuator.
package lanes

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Handler handles one message; false ends its lane, and the lanes stop
// (Stopped): the messages after it must not go before it, so its reader
// ends and the next starts again from the first one not acknowledged.
type Handler func(ctx context.Context, m jetstream.Msg) bool

// Lanes keeps each key's messages in a lane, drained by one goroutine at a
// time, with at most parallel handlers at work at once (one waiting in
// Pause does not count). A copy of a message
// already in hand (JetStream redelivers one not acknowledged in time) is
// dropped, and every message in hand is said to be in progress every
// keepAlive, so that queued ones do not come back behind newer ones.
type Lanes struct {
	handle  Handler
	mu      sync.Mutex
	lanes   map[string][]jetstream.Msg // present while a goroutine drains it
	held    map[uint64]jetstream.Msg   // stream sequence -> message in hand
	slots   chan struct{}
	wg      sync.WaitGroup
	stopped chan struct{}
	halted  bool // a handler returned false: no lane starts again (under mu)
	stop    sync.Once
	// InHand, if set, is told how many messages came in (+) and went (-).
	InHand func(delta int)
}

// New makes lanes of at most parallel keys at once; while ctx lasts, the
// messages in hand are said in progress every keepAlive (0: never).
func New(ctx context.Context, parallel int, keepAlive time.Duration, handle Handler) *Lanes {
	l := &Lanes{handle: handle, lanes: map[string][]jetstream.Msg{}, held: map[uint64]jetstream.Msg{},
		slots: make(chan struct{}, max(parallel, 1)), stopped: make(chan struct{})}
	if keepAlive > 0 {
		go l.keepAlive(ctx, keepAlive)
	}
	return l
}

// Stopped is closed when a handler returned false.
func (l *Lanes) Stopped() <-chan struct{} { return l.stopped }

func (l *Lanes) keepAlive(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		held := make([]jetstream.Msg, 0, len(l.held))
		for _, m := range l.held {
			held = append(held, m)
		}
		l.mu.Unlock()
		for _, m := range held {
			_ = m.InProgress()
		}
	}
}

func (l *Lanes) inHand(d int) {
	if l.InHand != nil {
		l.InHand(d)
	}
}

func seq(m jetstream.Msg) uint64 {
	if meta, err := m.Metadata(); err == nil {
		return meta.Sequence.Stream
	}
	return 0
}

// Add queues m in key's lane, starting the lane when it is not going; it
// waits for a slot when every slot is taken, and returns ctx's error if
// ctx ends meanwhile. A copy of a message in hand is dropped.
func (l *Lanes) Add(ctx context.Context, key string, m jetstream.Msg) error {
	s := seq(m)
	l.mu.Lock()
	if l.halted {
		// a lane stopped: what follows its message must not go first
		l.mu.Unlock()
		return ErrStopped
	}
	if _, dup := l.held[s]; dup && s != 0 {
		l.mu.Unlock()
		return nil
	}
	l.held[s] = m
	l.inHand(1)
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
		l.drop(key)
		return ctx.Err()
	}
	l.mu.Lock()
	halted := l.halted
	l.mu.Unlock()
	if halted { // a lane stopped while this one waited for its slot
		<-l.slots
		l.drop(key)
		return ErrStopped
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		sl := &slot{l: l, held: true}
		ctx := context.WithValue(ctx, slotKey{}, sl)
		defer func() {
			if sl.held {
				<-l.slots
			}
		}()
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
			l.mu.Lock()
			delete(l.held, seq(m))
			l.inHand(-1)
			l.mu.Unlock()
			if !ok {
				l.mu.Lock()
				l.halted = true
				l.mu.Unlock()
				l.drop(key)
				l.stop.Do(func() { close(l.stopped) })
				return
			}
		}
	}()
	return nil
}

// slot is a lane's hold on one of the slots, in its handler's context.
type slot struct {
	l    *Lanes
	held bool
}

type slotKey struct{}

// Pause waits d in a handler without holding its slot, so that other
// keys' lanes go on meanwhile (a handler waiting to retry its message);
// the lane's key stays busy: its next messages still wait behind this
// one. It returns ctx's error if ctx ends first. Outside a lane it just
// waits.
func Pause(ctx context.Context, d time.Duration) error {
	sl, _ := ctx.Value(slotKey{}).(*slot)
	if sl != nil && sl.held {
		<-sl.l.slots
		sl.held = false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	if sl != nil {
		select {
		case sl.l.slots <- struct{}{}:
			sl.held = true
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// drop forgets key's lane: its messages are not acknowledged and come back.
func (l *Lanes) drop(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.lanes[key] {
		delete(l.held, seq(m))
		l.inHand(-1)
	}
	delete(l.lanes, key)
}

// Wait waits for every lane to end.
func (l *Lanes) Wait() { l.wg.Wait() }

// ErrStopped ends a Drain whose handler returned false: the reader starts
// again from the first message not acknowledged.
var ErrStopped = errors.New("a message ended without an outcome; reading again from the first not acknowledged")

// Drain hands the messages of it to lanes keyed by the last token of
// their subject (a card), at most parallel lanes at once, until ctx ends
// (nil), the iterator fails (its error), valid says the reader may not go
// on, or a handler returned false (ErrStopped); it returns once every lane
// has ended, their context ended first. inHand may be nil.
func Drain(ctx context.Context, it jetstream.MessagesContext, parallel int, keepAlive time.Duration, handle Handler, valid func() bool, inHand func(int)) error {
	lctx, cancel := context.WithCancel(ctx)
	l := New(lctx, parallel, keepAlive, handle)
	l.InHand = inHand
	defer l.Wait()
	defer cancel()
	go func() { // Next waits for a message whatever ctx says
		select {
		case <-lctx.Done():
		case <-l.Stopped():
		}
		it.Stop()
	}()
	for {
		m, err := it.Next()
		select {
		case <-l.Stopped():
			// what follows the stopped message's key must not go first
			return ErrStopped
		default:
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return err
		}
		if !valid() {
			return errors.New("the reader's lease is not valid")
		}
		key := m.Subject()
		if i := strings.LastIndexByte(key, '.'); i >= 0 {
			key = key[i+1:]
		}
		if err := l.Add(lctx, key, m); errors.Is(err, ErrStopped) {
			return ErrStopped
		} else if err != nil {
			return nil // ctx ended while waiting for a slot
		}
	}
}
