package chaos

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// TestGeneratorResendsTheSameRecord: a record is a pure function of its
// writer and number, so a re-sent record is the same record, and each
// writer only writes its own cards.
func TestGeneratorResendsTheSameRecord(t *testing.T) {
	f := newFleet(20, 4, 2, 1<<30)
	g := newGenerator(7, clockStart.Unix(), f, 2)
	seen := map[string]bool{}
	for w := 0; w < 2; w++ {
		for n := uint64(0); n < 1000; n++ {
			r := g.record(w, n)
			if r != g.record(w, n) {
				t.Fatalf("record %d of writer %d differs when made again", n, w)
			}
			if seen[r.id] {
				t.Fatalf("record id %s made twice", r.id)
			}
			seen[r.id] = true
			if r.card%2 != w {
				t.Fatalf("writer %d wrote card %d of the other writer", w, r.card)
			}
			if r.end >= clockStart.Unix() || r.start < clockStart.Unix()-72*3600 || r.end <= r.start {
				t.Fatalf("record %s: session %d..%d outside the 72 hours before the clock", r.id, r.start, r.end)
			}
		}
	}
}

// TestBatchResendsOnlyAcknowledgedRecords: a batch's re-sent copies come
// from earlier batches, are left out of its ledger share, and are encoded
// exactly like the first time.
func TestBatchResendsOnlyAcknowledgedRecords(t *testing.T) {
	f := newFleet(10, 2, 1, 1<<30)
	w := &writer{batch: 100, resendPM: 50, seed: 3, gen: newGenerator(3, clockStart.Unix(), f, 1), fleet: f, csv: true}
	first, resent := w.makeBatch(0)
	if resent != 0 || len(first) != 100 {
		t.Fatalf("first batch: %d records, %d re-sent; want 100, 0", len(first), resent)
	}
	second, resent := w.makeBatch(1)
	if resent != 5 || len(second) != 105 {
		t.Fatalf("second batch: %d records, %d re-sent; want 105, 5", len(second), resent)
	}
	earlier := string(w.encode(first))
	for _, r := range second[100:] {
		line := strings.SplitN(string(w.encode([]record{r})), "\n", 3)[1]
		if !strings.Contains(earlier, line+"\n") {
			t.Fatalf("re-sent %q is not a record of the first batch", line)
		}
	}
}

// TestShortCampaign is the short form of `make chaos`: the real binary on
// its own ClickHouse, a few kill points of every kind and one ClickHouse
// stop under load, then every check. It needs clickhouse-server (make
// deps installs it) and builds the binary without the race detector.
func TestShortCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the all-in-one and a ClickHouse server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bin, err := Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Binary:   bin,
		WorkDir:  t.TempDir(),
		Duration: 40 * time.Second,
		Kills:    4,
		CHStops:  1,
		Rate:     3000,
		Writers:  2,
		Batch:    1000,
		ResendPM: 20,
		Cards:    60,
		Accounts: 12,
		Seed:     uint64(time.Now().UnixNano()),
		Log:      zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
	}
	t.Logf("seed %d", cfg.Seed)
	rep, err := Run(ctx, cfg)
	if rep != nil {
		var b strings.Builder
		rep.Print(&b)
		t.Log(b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	// The campaign did what it says, so that a pass means something.
	if rep.KillPoints() < 4 || rep.Kills[KillSIGKILL] == 0 || rep.Kills[KillSIGTERM] == 0 {
		t.Errorf("kill points %v: want at least 4, with kill -9 and SIGTERM", rep.Kills)
	}
	if rep.Restarts < 4 || rep.CHStops != 1 {
		t.Errorf("%d restarts and %d ClickHouse stops: want at least 4 and 1", rep.Restarts, rep.CHStops)
	}
	if rep.Records < 50000 || rep.Resent == 0 || rep.CrossingCards == 0 || rep.CrossingCards == rep.Cards {
		t.Errorf("%d records, %d re-sent, %d of %d cards crossing: the load is too thin to show anything",
			rep.Records, rep.Resent, rep.CrossingCards, rep.Cards)
	}
	if rep.NoAnswer == 0 {
		t.Error("no request ever went unanswered: the kills did not hit the writers")
	}
	if rep.Failed() {
		t.Errorf("the campaign found %d failures (report above)", len(rep.Failures))
	}
}

// TestPlanCoversEveryKind: the planned faults are the kills and ClickHouse
// stops asked for, and the first kills cover every kind of kill once.
func TestPlanCoversEveryKind(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		c := &campaign{cfg: Config{Kills: 5, CHStops: 2}, rnd: rand.New(rand.NewPCG(seed, 1))}
		kinds := map[string]int{}
		for _, f := range c.plan() {
			kinds[f]++
		}
		if kinds[faultCH] != 2 || kinds[KillSIGKILL]+kinds[KillSIGTERM]+kinds[KillStartup] != 5 {
			t.Fatalf("seed %d: plan %v: want 5 kills and 2 ClickHouse stops", seed, kinds)
		}
		if kinds[KillSIGKILL] == 0 || kinds[KillSIGTERM] == 0 || kinds[KillStartup] == 0 {
			t.Fatalf("seed %d: plan %v misses a kind of kill", seed, kinds)
		}
	}
}
