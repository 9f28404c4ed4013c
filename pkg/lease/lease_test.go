package lease_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/lease"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

const ttl = 1500 * time.Millisecond

// tracker records who runs which partition when, and fails the test the
// moment two instances run one partition at once.
type tracker struct {
	t       *testing.T
	mu      sync.Mutex
	active  map[int]string
	ended   map[int]time.Time // when the last run of each partition returned
	started map[int]time.Time // when the last run of each partition began
	causes  map[string][]error
}

func newTracker(t *testing.T) *tracker {
	return &tracker{t: t, active: map[int]string{}, ended: map[int]time.Time{}, started: map[int]time.Time{}, causes: map[string][]error{}}
}

func (tr *tracker) run(instance string) func(ctx context.Context, l *lease.Lease) {
	return func(ctx context.Context, l *lease.Lease) {
		tr.mu.Lock()
		if other, ok := tr.active[l.Partition]; ok {
			tr.t.Errorf("partition %d taken by %s while %s runs it", l.Partition, instance, other)
		}
		tr.active[l.Partition] = instance
		tr.started[l.Partition] = time.Now()
		tr.mu.Unlock()
		// the owner acts only while its lease is valid, as the projector does
		for l.Valid() && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		<-ctx.Done()
		tr.mu.Lock()
		delete(tr.active, l.Partition)
		tr.ended[l.Partition] = time.Now()
		tr.causes[instance] = append(tr.causes[instance], context.Cause(ctx))
		tr.mu.Unlock()
	}
}

func (tr *tracker) held(instance string) []int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []int
	for p, who := range tr.active {
		if who == instance {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func bucket(t *testing.T) (string, jetstream.KeyValue) {
	nc, js := testenv.JetStream(t)
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "leases-test", TTL: ttl, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return nc.ConnectedUrl(), kv
}

// manager makes a manager of the test bucket's leases on a connection of
// its own (closed, and the context cancelled, when the test ends).
func manager(t *testing.T, url, name string, parts int, opts ...nats.Option) (*nats.Conn, *lease.Manager, context.Context, context.CancelFunc) {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name(name)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), "leases-test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	mgr, err := lease.New(ctx, kv, lease.Config{Role: broker.RoleProjector, Instance: name, Partitions: parts}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return nc, mgr, ctx, cancel
}

// instance runs a manager on a connection of its own; the returned stop
// ends it as a stop does, crash as a crash does (the connection cut, no
// release).
func instance(t *testing.T, url, name string, parts int, tr *tracker) (mgr *lease.Manager, stop, crash func()) {
	nc, mgr, ctx, cancel := manager(t, url, name, parts, nats.MaxReconnects(0))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = mgr.Run(ctx, tr.run(name))
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; nc.Close() }) }
	crash = func() { once.Do(func() { nc.Close(); cancel(); <-done }) }
	t.Cleanup(stop)
	return mgr, stop, crash
}

func wantSpread(t *testing.T, tr *tracker, within time.Duration, want map[string]int) {
	t.Helper()
	testenv.Eventually(t, within, func() error {
		for who, n := range want {
			if got := tr.held(who); len(got) != n {
				return fmt.Errorf("%s runs %v, want %d partitions", who, got, n)
			}
		}
		return nil
	})
}

// Instances share the partitions evenly, one owner each at a time; one
// that joins gets its share, one that stops gives its partitions to the
// others at once.
func TestPartitionsSpreadAndMove(t *testing.T) {
	url, _ := bucket(t)
	tr := newTracker(t)
	a, _, _ := instance(t, url, "a", 6, tr)
	wantSpread(t, tr, 5*time.Second, map[string]int{"a": 6})
	if got := a.Held(); len(got) != 6 {
		t.Fatalf("a holds %v", got)
	}
	_, stopB, _ := instance(t, url, "b", 6, tr)
	wantSpread(t, tr, 10*time.Second, map[string]int{"a": 3, "b": 3})
	_, stopC, _ := instance(t, url, "c", 6, tr)
	wantSpread(t, tr, 10*time.Second, map[string]int{"a": 2, "b": 2, "c": 2})
	start := time.Now()
	stopB()
	stopC()
	wantSpread(t, tr, 5*time.Second, map[string]int{"a": 6})
	if took := time.Since(start); took > ttl {
		t.Errorf("stopped instances' partitions took %s to move: a stop releases its leases, they need not age out", took)
	}
	for _, c := range tr.causes["b"] {
		if errors.Is(c, lease.ErrLost) {
			t.Errorf("b lost a lease (%v); it gave them all back", c)
		}
	}
}

// A crashed owner's leases age out and pass to another instance, which
// starts each partition only after the old owner stopped acting on it;
// a restart of the crashed instance (same name) would have taken them
// back at once.
func TestCrashedOwnersLeasesPass(t *testing.T) {
	url, _ := bucket(t)
	tr := newTracker(t)
	_, _, crashA := instance(t, url, "a", 4, tr)
	wantSpread(t, tr, 5*time.Second, map[string]int{"a": 4})
	_, _, _ = instance(t, url, "b", 4, tr)
	wantSpread(t, tr, 10*time.Second, map[string]int{"a": 2, "b": 2})
	tr.mu.Lock()
	tr.causes["a"] = nil // two were given back to b, as they should
	tr.mu.Unlock()
	crashed := time.Now()
	crashA()
	wantSpread(t, tr, 10*time.Second, map[string]int{"b": 4})
	if took := time.Since(crashed); took < ttl/2 {
		t.Errorf("a crashed owner's partitions moved after %s, before its leases could have lapsed", took)
	}
	for _, c := range tr.causes["a"] {
		if !errors.Is(c, lease.ErrLost) && !errors.Is(c, context.Canceled) {
			t.Errorf("a's runs ended with %v", c)
		}
	}
}

// An instance that restarts after a crash takes its leases back at once:
// it need not wait for them to age out.
func TestRestartTakesLeasesBack(t *testing.T) {
	url, kv := bucket(t)
	tr := newTracker(t)
	_, _, crash := instance(t, url, "a", 4, tr)
	wantSpread(t, tr, 5*time.Second, map[string]int{"a": 4})
	crash()
	if _, err := kv.Get(context.Background(), lease.PartitionKey(broker.RoleProjector, 0)); err != nil {
		t.Fatalf("a crash left no lease behind: %v", err)
	}
	restarted := time.Now()
	_, _, _ = instance(t, url, "a", 4, tr)
	wantSpread(t, tr, 5*time.Second, map[string]int{"a": 4})
	if took := time.Since(restarted); took >= ttl/2 {
		t.Errorf("a restart took %s to take its partitions back", took)
	}
}

// An owner that cannot renew (cut off, paused) stops acting on its
// partitions before their leases can pass: its run's lease turns invalid
// and its context ends as lost, before another instance runs them.
func TestCutOffOwnerStopsBeforeLeasePasses(t *testing.T) {
	url, _ := bucket(t)
	tr := newTracker(t)
	nc, mgr, ctx, _ := manager(t, url, "a", 2)
	var invalidAt sync.Map
	go mgr.Run(ctx, func(ctx context.Context, l *lease.Lease) { //nolint:errcheck // ends with ctx
		for l.Valid() {
			time.Sleep(5 * time.Millisecond)
		}
		invalidAt.Store(l.Partition, time.Now())
		<-ctx.Done()
		if !errors.Is(context.Cause(ctx), lease.ErrLost) {
			t.Errorf("partition %d: the cut-off owner's run ended with %v, want lost", l.Partition, context.Cause(ctx))
		}
	})
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(mgr.Held()) != 2 {
			return fmt.Errorf("holds %v", mgr.Held())
		}
		return nil
	})
	// cut it off: the server drops it and it cannot reconnect
	nc.Close()
	_, _, _ = instance(t, url, "b", 2, tr)
	wantSpread(t, tr, 10*time.Second, map[string]int{"b": 2})
	for p := 0; p < 2; p++ {
		v, ok := invalidAt.Load(p)
		if !ok {
			t.Fatalf("partition %d: the cut-off owner never saw its lease turn invalid", p)
		}
		tr.mu.Lock()
		started := tr.started[p]
		tr.mu.Unlock()
		if stopped := v.(time.Time); !started.After(stopped) {
			t.Errorf("partition %d: b began at %s, before the cut-off owner stopped acting at %s", p, started.Format(time.StampMilli), stopped.Format(time.StampMilli))
		}
	}
}

// A run that is slow to end (a last checkpoint) does not stop the
// renewals of the others, and its partition is not run again here, nor
// anywhere, until it has ended: lose it (cut the connection past its
// validity) and take it back, and no two runs overlap.
func TestSlowRunsNeitherBlockRenewalsNorOverlap(t *testing.T) {
	url, _ := bucket(t)
	tr := newTracker(t)
	slow := make(chan struct{})
	_, mgr, ctx, _ := manager(t, url, "a", 4)
	base := tr.run("a")
	var mu sync.Mutex
	slowRuns := 0
	go mgr.Run(ctx, func(ctx context.Context, l *lease.Lease) { //nolint:errcheck // ends with ctx
		base(ctx, l)
		if l.Partition >= 2 { // two runs take long to end, as a last checkpoint may
			mu.Lock()
			slowRuns++
			mu.Unlock()
			<-slow
		}
	})
	wantSpread(t, tr, 5*time.Second, map[string]int{"a": 4})
	// b joins: a gives 2 and 3 back, whose runs hang; its renewals of 0
	// and 1 must go on meanwhile (else they lapse and b takes them too)
	_, _, _ = instance(t, url, "b", 4, tr)
	time.Sleep(3 * ttl)
	if got := mgr.Held(); len(got) != 2 {
		t.Fatalf("a holds %v while two of its runs end slowly; want its two others, renewed", got)
	}
	if got := tr.held("b"); len(got) != 0 {
		t.Fatalf("b runs %v while a's runs of them have not ended", got)
	}
	close(slow)
	wantSpread(t, tr, 10*time.Second, map[string]int{"a": 2, "b": 2})
	mu.Lock()
	defer mu.Unlock()
	if slowRuns < 2 {
		t.Fatalf("%d slow runs ended", slowRuns)
	}
}
