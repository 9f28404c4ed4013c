package lanes_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/lanes"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// consumer publishes n messages for each of keys keys ("lanes.<key>",
// body "<key>/<i>") and returns an iterator over them.
func consumer(t *testing.T, keys, n int) (jetstream.MessagesContext, map[string][]string) {
	it, want, _ := consumerWait(t, keys, n, 30*time.Second)
	return it, want
}

// consumerWait is consumer with the consumer's ack wait, returned too.
func consumerWait(t *testing.T, keys, n int, ackWait time.Duration) (jetstream.MessagesContext, map[string][]string, jetstream.Consumer) {
	t.Helper()
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LANES", Subjects: []string{"lanes.>"}}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	for i := 0; i < n; i++ {
		for k := 0; k < keys; k++ {
			key := fmt.Sprint("k", k)
			body := fmt.Sprintf("%s/%d", key, i)
			if _, err := js.Publish(ctx, "lanes."+key, []byte(body)); err != nil {
				t.Fatal(err)
			}
			want[key] = append(want[key], body)
		}
	}
	cons, err := js.CreateConsumer(ctx, "LANES", jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	return it, want, cons
}

// Each key's messages reach the handler in order, one at a time, while
// several keys go at once and never more than the bound.
func TestDrainKeepsEachKeysOrder(t *testing.T) {
	const keys, n, parallel = 12, 20, 4
	it, want := consumer(t, keys, n)
	var mu sync.Mutex
	got := map[string][]string{}
	busy := map[string]bool{}
	running, peak := 0, 0
	var twice error
	total := 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handle := func(_ context.Context, m jetstream.Msg) bool {
		key := m.Subject()[len("lanes."):]
		mu.Lock()
		if busy[key] {
			twice = fmt.Errorf("key %s handled twice at once", key)
		}
		busy[key] = true
		running++
		peak = max(peak, running)
		mu.Unlock()
		time.Sleep(2 * time.Millisecond) // long enough for lanes to overlap
		mu.Lock()
		got[key] = append(got[key], string(m.Data()))
		busy[key] = false
		running--
		total++
		if total == keys*n {
			cancel()
		}
		mu.Unlock()
		_ = m.Ack()
		return true
	}
	err := lanes.Drain(ctx, it, parallel, 0, handle, func() bool { return true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if twice != nil {
		t.Fatal(twice)
	}
	for key, w := range want {
		if fmt.Sprint(got[key]) != fmt.Sprint(w) {
			t.Errorf("key %s: %v, want %v", key, got[key], w)
		}
	}
	if peak > parallel || peak < 2 {
		t.Fatalf("at most %d keys at once, saw %d", parallel, peak)
	}
}

// A handler that returns false stops the lanes: Drain says so, and no
// later message of that key is handled after it.
func TestDrainStopsBehindAFailure(t *testing.T) {
	it, _ := consumer(t, 3, 10)
	var mu sync.Mutex
	failed := false
	var after []string
	handle := func(_ context.Context, m jetstream.Msg) bool {
		mu.Lock()
		defer mu.Unlock()
		if m.Subject() == "lanes.k1" && failed {
			after = append(after, string(m.Data()))
		}
		if string(m.Data()) == "k1/4" {
			failed = true
			return false
		}
		_ = m.Ack()
		return true
	}
	err := lanes.Drain(context.Background(), it, 2, 0, handle, func() bool { return true }, nil)
	if !errors.Is(err, lanes.ErrStopped) {
		t.Fatalf("Drain: %v, want ErrStopped", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !failed || len(after) != 0 {
		t.Fatalf("failed %v; handled after the failure on its key: %v", failed, after)
	}
}

// A message held past the ack wait: without keep-alive JetStream sends it
// again and the copy is dropped while the first is in hand; with it, the
// message is said in progress and never sent again. Either way it is
// handled once.
func TestMessagesInHandAreHandledOnce(t *testing.T) {
	for _, keepAlive := range []time.Duration{0, 100 * time.Millisecond} {
		t.Run(fmt.Sprint("keepAlive=", keepAlive), func(t *testing.T) {
			it, _, cons := consumerWait(t, 1, 2, 300*time.Millisecond)
			var mu sync.Mutex
			handled := map[string]int{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			handle := func(_ context.Context, m jetstream.Msg) bool {
				mu.Lock()
				handled[string(m.Data())]++
				first := handled[string(m.Data())] == 1 && string(m.Data()) == "k0/0"
				mu.Unlock()
				if first {
					time.Sleep(1200 * time.Millisecond) // four ack waits
				}
				_ = m.DoubleAck(context.Background())
				if string(m.Data()) == "k0/1" {
					cancel()
				}
				return true
			}
			if err := lanes.Drain(ctx, it, 2, keepAlive, handle, func() bool { return true }, nil); err != nil {
				t.Fatal(err)
			}
			info, err := cons.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if handled["k0/0"] != 1 || handled["k0/1"] != 1 {
				t.Fatalf("handled %v, want each once", handled)
			}
			// the consumer's view: sent again without keep-alive, not with it
			if redelivered := info.Delivered.Consumer > 2; redelivered != (keepAlive == 0) {
				t.Fatalf("keep-alive %s: %d deliveries of 2 messages", keepAlive, info.Delivered.Consumer)
			}
		})
	}
}

// A handler waiting in Pause gives its slot up: with one slot, another
// key's message is handled meanwhile, and no two handlers are at work at
// once; a context ended during a pause ends it, and Drain returns.
func TestPauseGivesTheSlotUp(t *testing.T) {
	it, _ := consumer(t, 2, 1) // k0/0, k1/0
	var mu sync.Mutex
	working, most := 0, 0
	var order []string
	work := func(d int, what string) {
		mu.Lock()
		defer mu.Unlock()
		working += d
		most = max(most, working)
		if what != "" {
			order = append(order, what)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handle := func(ctx context.Context, m jetstream.Msg) bool {
		work(1, string(m.Data())+" starts")
		if string(m.Data()) == "k0/0" {
			work(-1, "")
			if err := lanes.Pause(ctx, 300*time.Millisecond); err != nil {
				return false
			}
			work(1, "k0/0 resumes")
		}
		work(-1, string(m.Data())+" ends")
		_ = m.Ack()
		if string(m.Data()) == "k0/0" {
			cancel()
		}
		return true
	}
	if err := lanes.Drain(ctx, it, 1, 0, handle, func() bool { return true }, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := "[k0/0 starts k1/0 starts k1/0 ends k0/0 resumes k0/0 ends]"
	if fmt.Sprint(order) != want || most != 1 {
		t.Fatalf("order %v (want %s), at most %d at work at once (want 1)", order, want, most)
	}

	// ended while paused
	it2, _ := consumer(t, 1, 1)
	ctx2, cancel2 := context.WithCancel(context.Background())
	paused := make(chan struct{})
	var pauseErr error
	go func() { <-paused; cancel2() }()
	done := make(chan error, 1)
	go func() {
		done <- lanes.Drain(ctx2, it2, 1, 0, func(ctx context.Context, m jetstream.Msg) bool {
			close(paused)
			pauseErr = lanes.Pause(ctx, time.Hour)
			return false
		}, func() bool { return true }, nil)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return once its context ended during a pause")
	}
	if !errors.Is(pauseErr, context.Canceled) {
		t.Fatalf("Pause: %v, want the context's end", pauseErr)
	}
}
