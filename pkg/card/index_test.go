package card

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// memIndex is an exact record-id index in a map, as the shell's is on disk:
// entries go in at checkpoints, and a key may hold entries of several
// cycles (an id forgotten and counted again); a lookup answers the newest
// of the cycles asked for.
type memIndex map[[2]uint64][]uint64

func (x memIndex) add(es []IndexEntry) {
	for _, e := range es {
		k := [2]uint64{e.Card, e.ID}
		x[k] = append(x[k][:len(x[k]):len(x[k])], e.Seen)
	}
}

func (x memIndex) get(n Need) Lookup {
	var best Lookup
	for _, v := range x[[2]uint64{n.Card, n.ID}] {
		if c := SeenCycleStart(v); c >= n.From && c <= n.To && (!best.Found || c > SeenCycleStart(best.Seen)) {
			best = Lookup{Seen: v, Found: true}
		}
	}
	return best
}

// indexedFold folds a log as the projector does: each chunk's records that
// Probe names are looked up in the index first; every `every` entries the
// new ids go to the index (a checkpoint) and checkpoint is called.
type indexedFold struct {
	p          *Partition
	idx        memIndex
	every      int
	checkpoint func(pos int)
	lookups    int
	records    int
}

func (f *indexedFold) run(t testing.TB, log []any, from int) []Emitted {
	var out []Emitted
	var verdicts []Verdict
	var pr Probe
	for i := from; i < len(log); i++ {
		switch e := log[i].(type) {
		case Input:
			var err error
			if out, err = f.p.Apply(&e, out); err != nil {
				t.Fatal(err)
			}
		case chunk:
			f.p.Probe(&e.h, e.recs, &pr)
			for _, n := range pr.Needs {
				pr.Found[n.Rec] = f.idx.get(n)
			}
			f.lookups += len(pr.Needs)
			f.records += len(e.recs)
			verdicts, out = f.p.ApplyUsage(&e.h, e.recs, &pr, verdicts, out)
		}
		if f.every > 0 && (i+1)%f.every == 0 {
			if f.checkpoint != nil {
				f.checkpoint(i + 1) // marshals, then the ids go to the index
			}
			f.idx.add(f.p.TakeIDs(nil))
		}
	}
	return out
}

// With the ids off the heap in an exact index, checkpointed as a base and
// deltas of the cards that changed, a fold gives what the fold that keeps
// every id in memory gives; a restore from any checkpoint, with the index
// rolled back to it, then folding the rest, gives the same events and
// byte-identical state.
func TestIndexedFoldAndCheckpointsAreDeterministic(t *testing.T) {
	for _, seed := range []uint64{7, 23} {
		log := genLog(seed, 20000)
		ref := NewPartition()
		want := fold(t, ref, log)
		ref.TakeIDs(nil)
		wantState, _ := ref.MarshalSnapshot()

		type saved struct {
			pieces [][]byte
			idx    memIndex
			pos    int
			whole  []byte // the state then, ids taken
		}
		var checkpoints []saved
		restoreAt := map[int]bool{1: true, 45: true, 89: true, 150: true}
		var pieces [][]byte
		var emitted []int // events emitted by each position's end, for resuming
		f := &indexedFold{p: NewPartition(), idx: memIndex{}, every: 97}
		f.checkpoint = func(pos int) {
			if len(checkpoints)%10 == 0 {
				base, err := f.p.MarshalBase(7)
				if err != nil {
					t.Fatal(err)
				}
				pieces = base
			} else {
				d, _, err := f.p.MarshalDelta(5)
				if err != nil {
					t.Fatal(err)
				}
				pieces = append(pieces[:len(pieces):len(pieces)], d...)
			}
			// the index as of this checkpoint: what it had, and the ids the
			// checkpoint takes (as the projector installs its segments)
			idx := maps.Clone(f.idx)
			idx.add(f.p.recentEntries())
			var whole []byte
			if restoreAt[len(checkpoints)] {
				whole, _ = f.p.marshalTaken()
			}
			checkpoints = append(checkpoints, saved{pieces: pieces, idx: idx, pos: pos, whole: whole})
		}
		var got []Emitted
		for i := range log {
			got = append(got, f.run(t, log[i:i+1], 0)...)
			emitted = append(emitted, len(got))
			if f.every > 0 && (i+1)%f.every == 0 {
				f.checkpoint(i + 1)
				f.idx.add(f.p.TakeIDs(nil))
			}
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("seed %d: the indexed fold emitted other events than the in-memory one", seed)
		}
		if f.lookups*20 > f.records {
			t.Errorf("seed %d: %d index lookups for %d records: the filters let too much through", seed, f.lookups, f.records)
		}
		f.p.TakeIDs(nil)
		if s, _ := f.p.MarshalSnapshot(); !bytes.Equal(s, wantState) {
			t.Fatalf("seed %d: the indexed fold reached another state", seed)
		}
		if len(checkpoints) <= 150 {
			t.Fatalf("seed %d: only %d checkpoints", seed, len(checkpoints))
		}
		for _, k := range []int{1, 45, 89, 150} {
			cp := checkpoints[k]
			r := NewRestorer()
			for _, b := range cp.pieces {
				if err := r.Add(b); err != nil {
					t.Fatal(err)
				}
			}
			p, err := r.Finish()
			if err != nil {
				t.Fatal(err)
			}
			if s, _ := p.MarshalSnapshot(); !bytes.Equal(s, cp.whole) {
				diffStates(t, cp.whole, s)
				t.Fatalf("seed %d: checkpoint %d restores another state than it was taken of", seed, k)
			}
			g := &indexedFold{p: p, idx: maps.Clone(cp.idx), every: 50}
			rest := g.run(t, log, cp.pos)
			resumed := append(append([]Emitted(nil), got[:emitted[cp.pos-1]]...), rest...)
			if !reflect.DeepEqual(want, resumed) {
				t.Fatalf("seed %d: resumed from checkpoint %d (position %d): other events", seed, k, cp.pos)
			}
			p.TakeIDs(nil)
			if s, _ := p.MarshalSnapshot(); !bytes.Equal(s, wantState) {
				diffStates(t, wantState, s)
				t.Fatalf("seed %d: resumed from checkpoint %d: another state", seed, k)
			}
		}
	}
}

// recentEntries lists the ids counted since the last TakeIDs, without
// taking them.
func (p *Partition) recentEntries() []IndexEntry {
	var es []IndexEntry
	for _, c := range p.order {
		c.recent.each(func(k uint64, v seenRecord) { es = append(es, IndexEntry{Card: uint64(c.ord), ID: k, Seen: uint64(v)}) })
	}
	return es
}

// marshalTaken is the whole state as it is once its recent ids are taken.
func (p *Partition) marshalTaken() ([]byte, error) {
	saved := make([]idSet, len(p.order))
	for i, c := range p.order {
		saved[i], c.recent = c.recent, idSet{}
	}
	defer func() {
		for i, c := range p.order {
			c.recent = saved[i]
		}
	}()
	return p.MarshalSnapshot()
}

// A tick changes only the cards with a deadline due, and a checkpoint's
// delta holds just the cards the fold changed: a minute's tick over a
// fleet writes nothing; the one that crosses a cycle boundary, every card;
// a record, its card.
func TestDeltasHoldWhatChanged(t *testing.T) {
	p := NewPartition()
	now := unix("2026-03-10T00:00:00+08:00")
	p.Apply(&Input{Type: TypeClockTicked, At: now}, nil)                                                                               //nolint:errcheck
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil)                //nolint:errcheck
	p.Apply(&Input{Type: TypePlanChanged, ID: "q", At: now, Plan: &PlanChanged{PlanID: "q", QuotaBytes: 1 << 40, TermMonths: 1}}, nil) //nolint:errcheck
	var iccids []string
	for i := 0; i < 1000; i++ {
		prefix := fmt.Sprintf("898600%013d", i)
		iccids = append(iccids, prefix+string(cdr.LuhnDigit(prefix)))
		plan := "p"
		if i == 7 {
			plan = "q" // valid for a month: its expiry warnings fall due
		}
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c", At: now, Card: &CardProvisioned{ICCID: iccids[i], AccountID: "a", PlanID: plan}}, nil) //nolint:errcheck
	}
	delta := func() int {
		_, n, err := p.MarshalDelta(300)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := delta(); n != 1000 {
		t.Fatalf("after provisioning: %d cards in the delta, want 1000", n)
	}
	for m := 1; m <= 60; m++ {
		p.Apply(&Input{Type: TypeClockTicked, At: now + int64(m)*60}, nil) //nolint:errcheck
	}
	if n := delta(); n != 0 {
		t.Fatalf("an hour of minute ticks with nothing due: %d cards in the delta", n)
	}
	h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: now + 3600}
	p.ApplyUsage(&h, []cdr.Record{{RecordID: "r1", ICCID: iccids[3], Start: now, End: now + 60, BytesDown: 10}}, nil, nil, nil)
	if n := delta(); n != 1 {
		t.Fatalf("one record: %d cards in the delta, want 1", n)
	}
	p.Apply(&Input{Type: TypeClockTicked, At: unix("2026-03-31T23:00:00+08:00")}, nil) //nolint:errcheck
	if n := delta(); n != 1 {
		t.Fatalf("three weeks on, only card 7's 30-day expiry warning due (11 March): %d cards in the delta, want 1", n)
	}
	p.Apply(&Input{Type: TypeClockTicked, At: unix("2026-04-01T00:01:00+08:00")}, nil) //nolint:errcheck
	if n := delta(); n != 1000 {
		t.Fatalf("the tick past the cycle's end: %d cards in the delta, want all 1000", n)
	}
	// card 7 is valid until 10 April: its 7-day warning falls due on the 3rd
	p.Apply(&Input{Type: TypeClockTicked, At: unix("2026-04-03T01:00:00+08:00")}, nil) //nolint:errcheck
	if n := delta(); n != 1 {
		t.Fatalf("a tick with one card's warning due: %d cards in the delta, want 1", n)
	}
	if v, _ := p.Card(iccids[7]); !slices.Contains(v.Warnings, "expiry_7d") {
		t.Fatalf("card 7 has no warning: %+v", v)
	}
}

// A delta's head holds only the accounts, pools and plans that changed: a
// payment to one account of many writes that account, not the others.
func TestDeltaHeadHoldsWhatChanged(t *testing.T) {
	p := NewPartition()
	now := unix("2026-03-10T00:00:00+08:00")
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil) //nolint:errcheck
	for i := 0; i < 500; i++ {
		p.Apply(&Input{Type: TypeAccountChanged, ID: "a", At: now, Account: &AccountChanged{AccountID: fmt.Sprint("acct", i)}}, nil) //nolint:errcheck
		for j := 0; j < 20; j++ {
			p.Apply(&Input{Type: TypePaymentReceived, ID: "pay", At: now, Payment: &Payment{AccountID: fmt.Sprint("acct", i), PaymentID: fmt.Sprint("pay", i, "-", j), AmountFen: 100}}, nil) //nolint:errcheck
		}
	}
	base, err := p.MarshalBase(1000)
	if err != nil {
		t.Fatal(err)
	}
	p.Apply(&Input{Type: TypePaymentReceived, ID: "pay", At: now, Payment: &Payment{AccountID: "acct7", PaymentID: "new", AmountFen: 100}}, nil) //nolint:errcheck
	d, _, err := p.MarshalDelta(1000)
	if err != nil {
		t.Fatal(err)
	}
	s, err := decodePiece(d[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Accounts) != 1 || s.Accounts[0].AccountID != "acct7" || len(s.Plans) != 0 {
		t.Fatalf("the delta's head has %d accounts and %d plans; want acct7 alone", len(s.Accounts), len(s.Plans))
	}
	if len(d[0])*50 > len(base[0]) {
		t.Fatalf("a delta of one payment is %d bytes, the base %d", len(d[0]), len(base[0]))
	}
	r := NewRestorer()
	for _, b := range append(base, d...) {
		if err := r.Add(b); err != nil {
			t.Fatal(err)
		}
	}
	q, err := r.Finish()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := p.MarshalSnapshot()
	if got, _ := q.MarshalSnapshot(); !bytes.Equal(got, want) {
		diffStates(t, want, got)
		t.Fatal("base and delta restore another state")
	}
}

// A card moved to a plan with another anchor day still finds, in the
// index, a record it counted under the old plan: re-sent, it is a
// duplicate, as it is before the checkpoint (a lookup narrowed to the new
// plan's cycles would miss it and count it again).
func TestIndexLookupAfterAPlanChange(t *testing.T) {
	now := unix("2026-03-10T12:00:00+08:00")
	for _, checkpoint := range []bool{false, true} {
		p := NewPartition()
		idx := memIndex{}
		p.Apply(&Input{Type: TypeClockTicked, At: now}, nil)                                                                                      //nolint:errcheck
		p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil)                       //nolint:errcheck
		p.Apply(&Input{Type: TypePlanChanged, ID: "q", At: now, Plan: &PlanChanged{PlanID: "p15", QuotaBytes: 1 << 40, CycleAnchorDay: 15}}, nil) //nolint:errcheck
		card := "89860000000000000019"
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c", At: now, Card: &CardProvisioned{ICCID: card, AccountID: "a", PlanID: "p"}}, nil) //nolint:errcheck
		h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: now}
		r1 := []cdr.Record{{RecordID: "r1", ICCID: card, Start: now - 3600, End: now - 3000, BytesDown: 10}}
		fold := func(h cdr.ChunkHeader) UsageStatus {
			var pr Probe
			p.Probe(&h, r1, &pr)
			for _, n := range pr.Needs {
				pr.Found[n.Rec] = idx.get(n)
			}
			v, _ := p.ApplyUsage(&h, r1, &pr, nil, nil)
			return v[0].Status
		}
		if s := fold(h); s != Accepted {
			t.Fatalf("first: %s", s)
		}
		if checkpoint {
			idx.add(p.TakeIDs(nil))
		}
		later := unix("2026-04-02T00:00:00+08:00")
		p.Apply(&Input{Type: TypeClockTicked, At: later}, nil)                                                                                   //nolint:errcheck
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c2", At: later, Card: &CardProvisioned{ICCID: card, AccountID: "a", PlanID: "p15"}}, nil) //nolint:errcheck
		h.ReceivedAt = later
		if s := fold(h); s != Duplicate {
			t.Fatalf("checkpoint %v: re-sent after the plan change: %s, want duplicate", checkpoint, s)
		}
	}
}

// A card's closed cycles' filters are coded at the rollover, restore from
// a checkpoint as they were, and a late record into a closed cycle uncodes
// its slot: the state restores byte for byte at each step, and every id
// counted is still a duplicate.
func TestCodedSlotsThroughCheckpoints(t *testing.T) {
	f := newFixture(t, 1<<40, false)
	var ids []string
	for i := 0; i < 400; i++ {
		id := fmt.Sprint("jan-", i)
		ids = append(ids, id)
		if v := f.usage(id, "2026-01-15T10:00:00+08:00", 100); v.Status != Accepted {
			t.Fatalf("record %d: %v", i, v.Status)
		}
	}
	c := f.p.cards[iccidA]
	if !c.fps[0].young {
		t.Fatal("a first cycle's slot should be young")
	}
	f.tick("2026-02-01T00:01:00+08:00")
	if !c.fps[1].coded || c.fps[1].len() != 400 || c.fps[0].young || c.fps[0].k != bucketBits(400) {
		t.Fatalf("after the rollover: closed coded=%v len %d; open young=%v k=%d", c.fps[1].coded, c.fps[1].len(), c.fps[0].young, c.fps[0].k)
	}
	roundTrip := func(what string) {
		t.Helper()
		want, _ := f.p.marshalTaken()
		base, err := f.p.MarshalBase(10)
		if err != nil {
			t.Fatal(err)
		}
		r := NewRestorer()
		for _, b := range base {
			if err := r.Add(b); err != nil {
				t.Fatal(err)
			}
		}
		p, err := r.Finish()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := p.MarshalSnapshot(); !bytes.Equal(got, want) {
			diffStates(t, want, got)
			t.Fatalf("%s: restored another state", what)
		}
	}
	roundTrip("coded")
	// a late record into January uncodes its slot; January's ids still count once
	if v := f.usage("jan-late", "2026-01-20T10:00:00+08:00", 100); v.Status != Late {
		t.Fatalf("late record: %v", v.Status)
	}
	if c.fps[1].coded || c.fps[1].len() != 401 {
		t.Fatalf("after a late record: coded=%v len %d", c.fps[1].coded, c.fps[1].len())
	}
	roundTrip("uncoded by a late record")
	f.p.TakeIDs(nil) // the ids leave the heap: the filters alone remember them now
	for _, id := range append(ids[:5:5], "jan-late") {
		if !c.fps[1].mayHave(cdr.IDHash("cmcc", id)) {
			t.Fatalf("id %s forgotten by its filter", id)
		}
	}
	// the next rollover codes it again
	f.tick("2026-03-01T00:01:00+08:00")
	if !c.fps[2].coded || c.fps[2].len() != 401 {
		t.Fatalf("two rollovers on: coded=%v len %d", c.fps[2].coded, c.fps[2].len())
	}
	roundTrip("coded again")
}
