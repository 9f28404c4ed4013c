package chaos

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// pairForTest builds both binaries and starts a pair on the tests'
// ClickHouse.
func pairForTest(t *testing.T, cfg PairConfig) *pair {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs two processes")
	}
	ctx := context.Background()
	dir := t.TempDir()
	var err error
	if cfg.Binary, err = Build(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if cfg.ProjectorBinary, err = BuildProjector(ctx, dir); err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	cfg.Dir, cfg.ClickHouseAddr, cfg.ClickHouseDB, cfg.Log = dir, ch.Addr, ch.Database, testenv.Logger(t)
	p, err := startPair(ctx, cfg)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			for _, f := range []string{"a.log", "b.log"} {
				if b, err := os.ReadFile(dir + "/" + f); err == nil {
					t.Logf("%s (last 3000 bytes):\n%s", f, b[max(0, len(b)-3000):])
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A projector paused (SIGSTOP) past its leases loses its partitions to the
// other instance, which folds what came meanwhile; resumed, the paused one
// publishes nothing and stores no checkpoint before it learns it lost
// them, then takes its share again, and every record is counted once.
func TestPausedProjectorPublishesNothing(t *testing.T) {
	p := pairForTest(t, PairConfig{Partitions: 4, LeaseTTL: 3 * time.Second, Cards: 16})
	ctx := context.Background()
	mustWrite := func() {
		if _, err := p.write(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mustCount := func() {
		lost, doubled, err := p.counted(ctx)
		if err != nil || lost+doubled > 0 {
			t.Fatalf("%d cards short, %d over what was acknowledged (%v)", lost, doubled, err)
		}
	}
	mustWrite()
	mustCount()
	publishedBefore, err := metric(p.bHTTP, "cardmeter_projector_published_total")
	if err != nil || publishedBefore == 0 {
		t.Fatalf("b published %v before the pause (%v): it folds nothing?", publishedBefore, err)
	}
	checkpointsBefore, _ := metric(p.bHTTP, "cardmeter_projector_checkpoint_bytes_total")

	// pause b past its leases: a takes its partitions and folds what came
	p.b.signal(syscall.SIGSTOP)
	paused := time.Now()
	mustWrite()
	if err := p.alone(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mustCount()
	t.Logf("a folds b's partitions %s after the pause", time.Since(paused).Round(time.Millisecond))
	mustWrite() // b's former partitions have new records when it wakes

	// resumed, b learns it lost them before it does anything with them
	p.b.signal(syscall.SIGCONT)
	err = until(ctx, 10*time.Second, func() error {
		if h, err := held(p.bHTTP); err != nil || h != 0 {
			return fmt.Errorf("b holds %d (%v)", h, err)
		}
		published, _ := metric(p.bHTTP, "cardmeter_projector_published_total")
		checkpoints, _ := metric(p.bHTTP, "cardmeter_projector_checkpoint_bytes_total")
		if published != publishedBefore || checkpoints != checkpointsBefore {
			t.Errorf("the stale owner published %v messages and stored %v checkpoint bytes after its pause",
				published-publishedBefore, checkpoints-checkpointsBefore)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// then it takes its share again, and nothing is counted twice
	if err := p.spread(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mustWrite()
	mustCount()
}

// The hand-over campaign's short form: kill -9 of one of two projectors
// under load, its partitions folded by the other, spread again once it is
// back; nothing lost or counted twice (`make chaos-handover` runs 20).
func TestShortHandover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two processes")
	}
	ctx := context.Background()
	dir := t.TempDir()
	bin, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	pbin, err := BuildProjector(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	rep, err := RunHandover(ctx, HandoverConfig{Kills: 2, PairConfig: PairConfig{Binary: bin, ProjectorBinary: pbin, Dir: dir,
		ClickHouseAddr: ch.Addr, ClickHouseDB: ch.Database, Partitions: 4, LeaseTTL: 2 * time.Second, Cards: 8, Log: testenv.Logger(t)}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed() || rep.Kills != 2 || rep.Writes == 0 {
		t.Fatalf("%+v", rep)
	}
	for i, d := range rep.Handover {
		if d > 10*time.Second {
			t.Errorf("hand-over %d took %s with a 2 s lease", i, d)
		}
	}
	// every crossing record sent during a hand-over stopped its card:
	// those on the killed instance's partitions once they moved, the
	// others without waiting for the hand-over (the cards' accounts fall
	// on each of the 4 partitions, so 2 of 4 on each side)
	if len(rep.StopLatency) != 8 || len(rep.StopLatencyMoved) != 4 {
		t.Fatalf("%d stop latencies, %d of them moved; want 4 for each kill, half moved", len(rep.StopLatency), len(rep.StopLatencyMoved))
	}
	for _, d := range rep.StopLatency {
		if d < 0 || d > 20*time.Second {
			t.Errorf("stop latency %s during a hand-over with a 2 s lease", d)
		}
	}
	if slow := percentile(rep.StopLatencyStayed, 1); len(rep.StopLatencyStayed) != 4 || slow > time.Second {
		t.Errorf("the cards on the survivor's partitions (%d) took up to %s to stop: they should not wait for the hand-over", len(rep.StopLatencyStayed), slow)
	}
	t.Logf("hand-overs %v, spread again %v, %d batches, stop latencies %v", rep.Handover, rep.Respread, rep.Writes, rep.StopLatency)
}
