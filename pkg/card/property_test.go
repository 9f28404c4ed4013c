package card

import (
	"fmt"
	"slices"
	"testing"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// checkInvariants folds a log one event at a time and checks, after each:
// no panic; usage never wraps below zero; a card is in service iff it has
// no stop reason and is not cancelled; a resumed event leaves no reason;
// a cancelled card never emits again (but for its carrier's answers and
// resyncs) nor leaves cancellation; a resync of a cancelled card asks for
// cancel.
func checkInvariants(t *testing.T, log []any) {
	p := NewPartition()
	cancelled := map[string]bool{}
	var verdicts []Verdict
	for i, e := range log {
		var out []Emitted
		switch e := e.(type) {
		case Input:
			var err error
			if out, err = p.Apply(&e, nil); err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
		case chunk:
			verdicts, out = p.ApplyUsage(&e.h, e.recs, nil, verdicts, nil)
			for j, v := range verdicts {
				if cancelled[e.recs[j].ICCID] && v.Status.Counts() {
					t.Fatalf("event %d: usage counted for cancelled card %s", i, e.recs[j].ICCID)
				}
			}
		}
		for _, em := range out {
			// (what its carrier answers, and a resync, are about the
			// cancellation itself: the carrier follows cardmeter)
			carrier := em.Type == EmitActuationSucceeded || em.Type == EmitActuationFailed || em.Type == EmitResyncRequested
			if carrier && em.Cancelled != cancelled[em.ICCID] {
				t.Fatalf("event %d: %s of card %s says cancelled %v, the card is %v", i, em.Type, em.ICCID, em.Cancelled, cancelled[em.ICCID])
			}
			if em.Type == EmitResyncRequested && cancelled[em.ICCID] != (em.Code == "cancel") {
				t.Fatalf("event %d: resync of card %s (cancelled %v) asks %s", i, em.ICCID, cancelled[em.ICCID], em.Code)
			}
			if cancelled[em.ICCID] && em.Type != EmitInputRefused && em.Type != EmitCommandRefused && !carrier {
				t.Fatalf("event %d: cancelled card %s emitted %s", i, em.ICCID, em.Type)
			}
			if em.Type == EmitCancelled {
				cancelled[em.ICCID] = true
			}
			if em.Type == EmitResumed && em.Reasons != 0 {
				t.Fatalf("event %d: resumed with reasons %v", i, em.Reasons)
			}
		}
		for _, c := range p.order {
			v, _ := p.Card(c.iccid)
			if v.UsageBytes > 1<<62 {
				t.Fatalf("event %d: card %s usage %d wrapped", i, c.iccid, v.UsageBytes)
			}
			inService := v.Reasons == 0 && !cancelled[c.iccid]
			if (v.Status == InService) != inService || (v.Status == Cancelled) != cancelled[c.iccid] {
				t.Fatalf("event %d: card %s status %s with reasons %v, cancelled %v", i, c.iccid, v.Status, v.Reasons, cancelled[c.iccid])
			}
		}
	}
}

func TestFoldInvariants(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { checkInvariants(t, genLog(seed, 3000)) })
	}
}

// FuzzFold: no log the generator can make from any seed panics the fold or
// breaks an invariant. Seeds are in testdata/fuzz/FuzzFold.
func FuzzFold(f *testing.F) {
	f.Add(uint64(42), uint16(500))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16) {
		checkInvariants(t, genLog(seed, int(n%1500)+10))
	})
}

// The census agrees with the cards' own statuses and reasons, whatever
// the log.
func TestCensusAgreesWithTheCards(t *testing.T) {
	var stopped, inService, warned int
	for seed := uint64(1); seed <= 8; seed++ {
		p := NewPartition()
		fold(t, p, genLog(seed, 300))
		want := Census{ByReason: map[string]int{}, Warnings: map[string]int{}}
		for _, n := range reasonNames {
			want.ByReason[n.name] = 0
		}
		for _, c := range p.cards {
			if c.status() != Cancelled {
				for _, w := range p.view(c).Warnings {
					want.Warnings[w]++
					warned++
				}
			}
			switch c.status() {
			case InService:
				want.InService++
			case Stopped:
				want.Stopped++
				for _, r := range c.reasons.Names() {
					want.ByReason[r]++
				}
			case Cancelled:
				want.Cancelled++
			}
		}
		var near, runOut []Near
		for _, c := range p.cards {
			pl := p.plans[c.planID]
			if c.status() != InService || pl == nil || pl.QuotaBytes == 0 || c.usage == 0 {
				continue
			}
			n := Near{ICCID: c.iccid, AccountID: c.account, UsageBytes: c.usage, QuotaBytes: pl.QuotaBytes, CycleEnd: c.cycle.End}
			near = append(near, n)
			if el := p.now - c.cycle.Start; el > 0 && c.usage < pl.QuotaBytes {
				if at := c.cycle.Start + int64(float64(pl.QuotaBytes)/float64(c.usage)*float64(el)); at < c.cycle.End {
					n.RunOutAt = at
					runOut = append(runOut, n)
				}
			}
		}
		slices.SortFunc(near, nearer)
		slices.SortFunc(runOut, sooner)
		want.Nearest, want.RunOut, want.At = near[:min(len(near), CensusTop)], runOut[:min(len(runOut), CensusTop)], p.now
		got := p.Census()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("seed %d: census %+v, the cards say %+v", seed, got, want)
		}
		// a census of two halves adds up to the whole
		if sum := got.Add(Census{ByReason: map[string]int{}, Warnings: map[string]int{}}); fmt.Sprint(sum) != fmt.Sprint(want) {
			t.Fatalf("seed %d: census plus nothing %+v", seed, sum)
		}
		stopped, inService = stopped+want.Stopped, inService+want.InService
	}
	if stopped == 0 || inService == 0 || warned == 0 {
		t.Fatalf("logs without stopped (%d), in-service (%d) or warned (%d) cards show nothing", stopped, inService, warned)
	}
}

// ListCards pages as sorting every match would: from the cursor, in ICCID
// order, the first limit matches, for any filter; paging through gives
// every match once.
func TestListCardsAgreesWithASort(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		p := NewPartition()
		fold(t, p, genLog(seed, 400))
		accounts := []string{""}
		for a := range p.accounts {
			accounts = append(accounts, a)
		}
		for _, f := range []Filter{{}, {Status: Stopped}, {Status: InService}, {Reason: ReasonArrears}, {Status: Cancelled}, {Reason: ReasonExpiry},
			{Reason: ReasonOverQuota}, {Reason: ReasonManual}, {Status: Stopped, Reason: ReasonExpiry}, {Status: Cancelled, Reason: ReasonExpiry}} {
			for _, acct := range accounts {
				f.AccountID = acct
				var want []string
				for _, c := range p.cards {
					if (acct == "" || c.account == acct) && (f.Status == "" || c.status() == f.Status) && (f.Reason == 0 || c.reasons.Has(f.Reason)) {
						want = append(want, c.iccid)
					}
				}
				slices.Sort(want)
				var got []string
				for after := ""; ; {
					page := p.ListCards(f, after, 7)
					for _, v := range page {
						got = append(got, v.ICCID)
					}
					if len(page) < 7 {
						break
					}
					after = page[len(page)-1].ICCID
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("seed %d, filter %+v: paged %v, want %v", seed, f, got, want)
				}
			}
		}
		// a restored partition lists the same, without a sort at its first list
		b, err := p.MarshalSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		q, err := UnmarshalSnapshot(b)
		if err != nil {
			t.Fatal(err)
		}
		if q.listedN != len(q.listed) || fmt.Sprint(viewIDs(q.ListCards(Filter{}, "", 1000))) != fmt.Sprint(viewIDs(p.ListCards(Filter{}, "", 1000))) {
			t.Fatalf("seed %d: the restored partition lists otherwise (sorted %d of %d)", seed, q.listedN, len(q.listed))
		}
		// the list indexes hold each card where it belongs, restored too
		for _, part := range []*Partition{p, q} {
			for _, c := range part.cards {
				if c.lists != c.listsWanted() {
					t.Fatalf("seed %d: card %s is in lists %b, belongs in %b", seed, c.iccid, c.lists, c.listsWanted())
				}
			}
			for b, tree := range part.lists {
				if tree == nil {
					continue
				}
				tree.Ascend(func(c *Card) bool {
					if c.listsWanted()&(1<<b) == 0 {
						t.Fatalf("seed %d: card %s in list %d, where it does not belong", seed, c.iccid, b)
					}
					return true
				})
			}
			for _, f := range []Filter{{Status: Stopped}, {Status: Cancelled}, {Reason: ReasonArrears}, {Reason: ReasonExpiry}, {Reason: ReasonManual}} {
				if fmt.Sprint(viewIDs(q.ListCards(f, "", 1000))) != fmt.Sprint(viewIDs(p.ListCards(f, "", 1000))) {
					t.Fatalf("seed %d, filter %+v: the restored partition lists otherwise", seed, f)
				}
			}
		}
		// a card provisioned after the first list goes in its place
		prefix := "8986000000000000000"
		iccid := prefix + string(cdr.LuhnDigit(prefix))
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "late", At: p.now, Card: &CardProvisioned{ICCID: iccid, AccountID: "acct-late", PlanID: "plan0"}}, nil) //nolint:errcheck
		if page := p.ListCards(Filter{}, "", 1); len(page) != 1 || page[0].ICCID != iccid {
			t.Fatalf("seed %d: the first card is %+v, want the late one %s", seed, page, iccid)
		}
		if page := p.ListCards(Filter{AccountID: "acct-late"}, "", 5); len(page) != 1 || page[0].ICCID != iccid {
			t.Fatalf("seed %d: the late account's cards %+v", seed, page)
		}
	}
}

func viewIDs(vs []View) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.ICCID
	}
	return out
}
