package card

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

const (
	iccidA = "89860012345678901231"
	gb     = uint64(1) << 30
)

func unix(s string) int64 {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.Unix()
}

// fixture folds events into a partition and keeps what it emitted.
type fixture struct {
	t   *testing.T
	p   *Partition
	out []Emitted
	n   int
}

func newFixture(t *testing.T, quota uint64, autoStop bool) *fixture {
	f := &fixture{t: t, p: NewPartition()}
	f.apply(Input{Type: TypeClockTicked, At: unix("2026-01-10T00:00:00+08:00")})
	f.apply(Input{Type: TypePlanChanged, ID: "plan-1", At: unix("2026-01-10T00:00:00+08:00"),
		Plan: &PlanChanged{PlanID: "iot-1g", QuotaBytes: quota, TimeZone: "Asia/Shanghai"}})
	f.apply(Input{Type: TypeCardProvisioned, ID: "card-1", At: unix("2026-01-10T00:00:00+08:00"),
		Card: &CardProvisioned{ICCID: iccidA, AccountID: "acme", PlanID: "iot-1g", Carrier: "cmcc", AutoStopOverQuota: autoStop}})
	f.out = nil
	return f
}

func (f *fixture) apply(in Input) {
	f.t.Helper()
	var err error
	f.out, err = f.p.Apply(&in, f.out)
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) tick(at string) { f.apply(Input{Type: TypeClockTicked, At: unix(at)}) }

// usage folds one record and returns its verdict.
func (f *fixture) usage(id, start string, bytes uint64) Verdict {
	f.t.Helper()
	s := unix(start)
	rec := cdr.Record{RecordID: id, ICCID: iccidA, Start: s, End: s + 60, BytesDown: bytes}
	var v []Verdict
	v, f.out = f.p.ApplyUsage(&cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: s + 120}, []cdr.Record{rec}, nil, nil, f.out)
	return v[0]
}

func (f *fixture) emitted(t EmittedType) []Emitted {
	var r []Emitted
	for _, e := range f.out {
		if e.Type == t {
			r = append(r, e)
		}
	}
	return r
}

func (f *fixture) card() View {
	v, ok := f.p.Card(iccidA)
	if !ok {
		f.t.Fatal("card missing")
	}
	return v
}

// DOMAIN.md §2 自动超停: an opted-in card stops when cycle usage goes over
// the quota, and the overshoot is recorded.
func TestOverQuotaStopsOptedInCard(t *testing.T) {
	f := newFixture(t, gb, true)
	f.usage("r1", "2026-01-11T10:00:00+08:00", gb-100)
	if len(f.emitted(EmitStopped)) != 0 || f.card().Status != InService {
		t.Fatal("stopped below the quota")
	}
	f.usage("r2", "2026-01-11T11:00:00+08:00", 100) // exactly at quota: not over
	if f.card().Status != InService {
		t.Fatal("stopped at exactly the quota")
	}
	f.usage("r3", "2026-01-11T12:00:00+08:00", 5000)
	st := f.emitted(EmitStopped)
	if len(st) != 1 {
		t.Fatalf("want one stopped event, got %d", len(st))
	}
	if st[0].Reason != ReasonOverQuota || st[0].Overshoot != 5000 || st[0].Cause != "record:cmcc/r3" {
		t.Fatalf("stopped event = %+v", st[0])
	}
	f.usage("r4", "2026-01-11T12:05:00+08:00", 1000) // in flight after the cut
	if n := len(f.emitted(EmitStopped)); n != 1 {
		t.Fatalf("stopped emitted %d times", n)
	}
	c := f.card()
	if c.Status != Stopped || !c.Reasons.Has(ReasonOverQuota) || c.UsageBytes != gb+6000 || c.OvershootBytes != 6000 {
		t.Fatalf("card = %+v", c)
	}
}

// DOMAIN.md §2: a card without the option keeps working over quota.
func TestOverQuotaWithoutOptionKeepsWorking(t *testing.T) {
	f := newFixture(t, gb, false)
	f.usage("r1", "2026-01-11T10:00:00+08:00", 2*gb)
	if len(f.emitted(EmitStopped)) != 0 || f.card().Status != InService {
		t.Fatal("a card without auto stop was stopped")
	}
}

// DOMAIN.md §2: at the start of the next cycle the counter resets and the
// over-quota stop clears automatically, driven by a clock tick.
func TestOverQuotaClearsAtNextCycle(t *testing.T) {
	f := newFixture(t, gb, true)
	f.usage("r1", "2026-01-20T10:00:00+08:00", gb+1)
	f.tick("2026-01-31T23:59:00+08:00")
	if len(f.emitted(EmitResumed)) != 0 {
		t.Fatal("resumed before the cycle ended")
	}
	f.tick("2026-02-01T00:00:00+08:00")
	r := f.emitted(EmitResumed)
	if len(r) != 1 || r[0].Reason != ReasonOverQuota || r[0].Cause != fmt.Sprintf("tick:%d", unix("2026-02-01T00:00:00+08:00")) {
		t.Fatalf("resumed = %+v", r)
	}
	if cl := f.emitted(EmitCycleClosed); len(cl) != 1 || cl[0].Usage != gb+1 {
		t.Fatalf("cycle closed = %+v", cl)
	}
	c := f.card()
	if c.Status != InService || c.UsageBytes != 0 || c.Cycle.Start != unix("2026-02-01T00:00:00+08:00") {
		t.Fatalf("card after rollover = %+v", c)
	}
}

// DOMAIN.md "Usage records": a record id (per carrier) counts once; the same
// id with different content is a conflict: the first counts.
func TestDuplicateAndConflictingRecords(t *testing.T) {
	f := newFixture(t, 10*gb, true)
	if v := f.usage("r1", "2026-01-11T10:00:00+08:00", 1000); v.Status != Accepted {
		t.Fatalf("first: %v", v.Status)
	}
	if v := f.usage("r1", "2026-01-11T10:00:00+08:00", 1000); v.Status != Duplicate {
		t.Fatalf("re-sent: %v", v.Status)
	}
	if v := f.usage("r1", "2026-01-11T10:00:00+08:00", 999); v.Status != Conflict {
		t.Fatalf("changed: %v", v.Status)
	}
	if c := f.emitted(EmitUsageConflict); len(c) != 1 || c[0].Bytes != 999 {
		t.Fatalf("conflict events = %+v", c)
	}
	if u := f.card().UsageBytes; u != 1000 {
		t.Fatalf("usage = %d, want 1000", u)
	}
}

// DOMAIN.md: usage counts in the cycle its session started in; a record for
// a closed cycle stops nothing now.
func TestLateRecordIsAnAdjustment(t *testing.T) {
	f := newFixture(t, gb, true)
	f.tick("2026-02-02T00:00:00+08:00")
	v := f.usage("old", "2026-01-31T23:00:00+08:00", 5*gb)
	if v.Status != Late || v.CycleStart != unix("2026-01-01T00:00:00+08:00") {
		t.Fatalf("verdict = %+v", v)
	}
	if len(f.emitted(EmitStopped)) != 0 || f.card().UsageBytes != 0 {
		t.Fatal("a late record counted in the current cycle")
	}
	if a := f.emitted(EmitUsageAdjusted); len(a) != 1 || a[0].Bytes != 5*gb {
		t.Fatalf("adjustments = %+v", a)
	}
	if v := f.usage("old", "2026-01-31T23:00:00+08:00", 5*gb); v.Status != Duplicate {
		t.Fatalf("re-sent late record: %v", v.Status)
	}
	// beyond the retained cycles a record is refused, never counted twice
	if v := f.usage("ancient", "2025-10-15T00:00:00+08:00", 1); v.Status != TooLate {
		t.Fatalf("ancient record: %v", v.Status)
	}
}

// A record whose session starts in the next cycle rolls the card forward
// before the tick does; the stop clears and the record counts in the new cycle.
func TestRecordInNextCycleRollsForward(t *testing.T) {
	f := newFixture(t, gb, true)
	f.usage("r1", "2026-01-20T10:00:00+08:00", gb+1)
	v := f.usage("r2", "2026-02-01T00:10:00+08:00", 10)
	if v.Status != Accepted || v.CycleStart != unix("2026-02-01T00:00:00+08:00") {
		t.Fatalf("verdict = %+v", v)
	}
	c := f.card()
	if c.Status != InService || c.UsageBytes != 10 {
		t.Fatalf("card = %+v", c)
	}
	f.tick("2026-02-01T00:20:00+08:00")
	if n := len(f.emitted(EmitCycleClosed)); n != 1 {
		t.Fatalf("cycle closed %d times", n)
	}
}

func TestUnknownInputIsAnError(t *testing.T) {
	p := NewPartition()
	if _, err := p.Apply(&Input{Type: "card.teleported.v1"}, nil); err == nil {
		t.Fatal("an unknown input type was accepted")
	}
}

// genLog makes a long random log of every input kind: plans, accounts,
// pools, cards with and without validity, payments and charges (some
// repeated), renewals, manual commands, ticks small and large, and usage
// with duplicates, conflicts and late records.
func genLog(seed uint64, n int) []any {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var log []any
	now := unix("2026-01-01T00:00:00+08:00")
	id := func() string { return fmt.Sprint("e", len(log)) }
	log = append(log, Input{Type: TypeClockTicked, At: now})
	for i := 0; i < 3; i++ {
		log = append(log, Input{Type: TypePlanChanged, ID: id(), At: now,
			Plan: &PlanChanged{PlanID: fmt.Sprint("plan", i), QuotaBytes: uint64(1+i) * 1e6, CycleAnchorDay: []int{1, 27, 31}[i],
				TimeZone: []string{"", "UTC", "America/New_York"}[i], MonthlyFeeFen: int64(r.IntN(3) * 100),
				OverageFenPerMB: int64(r.IntN(3) * 10), TermMonths: r.IntN(4),
				BindIMEI: []string{"", BindFirstSeen, ""}[i], StopOnIMEIChange: i == 1,
				// plan2 judges days strictly enough for genLog's records
				AnomalyMinBytes: []uint64{0, 0, 2e5}[i], AnomalyFactor: []float64{0, 0, 1.5}[i], StopOnAnomaly: i == 2}})
	}
	accounts := []string{"acct0", "acct1", "acct2", "acct3"}
	for _, a := range accounts {
		log = append(log, Input{Type: TypeAccountChanged, ID: id(), At: now, Account: &AccountChanged{AccountID: a,
			CreditLimitFen: int64(r.IntN(3) * 500), LowBalanceFen: int64(r.IntN(2) * 300), AutoResumeOnPayment: r.IntN(2) == 0}})
		log = append(log, Input{Type: TypePoolChanged, ID: id(), At: now, Pool: &PoolChanged{PoolID: "pool-" + a, AccountID: a, QuotaBytes: uint64(r.IntN(4)+1) * 1e6}})
	}
	var cards []string
	for len(log) < n {
		switch k := r.IntN(100); {
		case k < 5 || len(cards) == 0:
			prefix := fmt.Sprintf("8986%014d", r.IntN(1e9))
			iccid := prefix + string(cdr.LuhnDigit(prefix))
			cards = append(cards, iccid)
			a := accounts[r.IntN(len(accounts))]
			cp := &CardProvisioned{ICCID: iccid, AccountID: a, PlanID: fmt.Sprint("plan", r.IntN(3)), Carrier: "cmcc", AutoStopOverQuota: r.IntN(2) == 0}
			if r.IntN(3) == 0 {
				cp.PoolID = "pool-" + a
			}
			if r.IntN(3) == 0 {
				cp.ValidUntil = now + int64(r.IntN(90*86400))
			}
			switch r.IntN(6) {
			case 0:
				cp.IMEI, cp.StopOnIMEIChange = genIMEIs[r.IntN(3)], true
			case 1:
				cp.BindIMEI = BindFirstSeen
			}
			log = append(log, Input{Type: TypeCardProvisioned, ID: id(), At: now, Card: cp})
		case k < 10:
			now += int64(r.IntN(5 * 86400))
			if r.IntN(20) == 0 {
				now += 100 * 86400 // a long jump across several cycles
			}
			log = append(log, Input{Type: TypeClockTicked, At: now})
		case k < 14:
			log = append(log, Input{Type: TypePaymentReceived, ID: id(), At: now, Payment: &Payment{AccountID: accounts[r.IntN(4)],
				PaymentID: fmt.Sprint("pay", r.IntN(200)), AmountFen: int64(r.IntN(3000) + 1)}})
		case k < 16:
			log = append(log, Input{Type: TypeChargeRequested, ID: id(), At: now, Charge: &Charge{AccountID: accounts[r.IntN(4)],
				ChargeID: fmt.Sprint("ch", r.IntN(200)), AmountFen: int64(r.IntN(2000) + 1)}})
		case k < 18:
			log = append(log, Input{Type: TypeCardRenewed, ID: id(), At: now, Renewal: &Renewal{ICCID: cards[r.IntN(len(cards))],
				RenewalID: id(), Months: r.IntN(3) + 1}})
		case k < 21:
			typ := []InputType{TypeStopRequested, TypeResumeRequested}[r.IntN(2)]
			log = append(log, Input{Type: typ, ID: id(), At: now, Command: &ManualCommand{ICCID: cards[r.IntN(len(cards))], Operator: "op"}})
		case k < 22:
			a := accounts[r.IntN(len(accounts))]
			log = append(log, Input{Type: TypePoolChanged, ID: id(), At: now, Pool: &PoolChanged{PoolID: "pool-" + a, AccountID: a, QuotaBytes: uint64(r.IntN(6)+1) * 1e6}})
		case k < 23:
			// what the actuator and a reconciliation write back
			c := cards[r.IntN(len(cards))]
			switch r.IntN(3) {
			case 0:
				log = append(log, Input{Type: TypeResyncRequested, ID: id(), At: now, Resync: &ResyncRequest{ICCID: c, Reason: "reconcile", By: "test"}})
			case 1:
				log = append(log, Input{Type: TypeRebindRequested, ID: id(), At: now, Rebind: &Rebind{ICCID: c, IMEI: genIMEIs[r.IntN(4)], Operator: "op"}})
			default:
				log = append(log, Input{Type: TypeActuationReported, ID: id(), At: now, Actuation: &ActuationReport{ICCID: c,
					Action: []string{"stop", "resume", "cancel"}[r.IntN(3)], Carrier: "cmcc", OK: r.IntN(2) == 0}})
			}
		default:
			h := cdr.ChunkHeader{Carrier: "cmcc", BatchID: id(), ReceivedAt: now}
			var recs []cdr.Record
			for j := r.IntN(20); j >= 0; j-- {
				start := now - int64(r.IntN(40*86400))
				recs = append(recs, cdr.Record{RecordID: fmt.Sprint("r", r.IntN(3000)), ICCID: cards[r.IntN(len(cards))],
					Start: start, End: start + 60, BytesUp: uint64(r.IntN(1e5)), BytesDown: uint64(r.IntN(3e5)), IMEI: genIMEIs[r.IntN(len(genIMEIs))]})
			}
			log = append(log, chunk{h, recs})
		}
	}
	return log
}

// genIMEIs are the devices of genLog's records: three devices (one by its
// IMEISV), a malformed one, and none.
var genIMEIs = []string{"490154203237518", "356938035643809", "4901542032375199", "352099001761481", "12ab", ""}

type chunk struct {
	h    cdr.ChunkHeader
	recs []cdr.Record
}

func fold(t testing.TB, p *Partition, log []any) []Emitted {
	var out []Emitted
	var verdicts []Verdict
	for _, e := range log {
		switch e := e.(type) {
		case Input:
			var err error
			if out, err = p.Apply(&e, out); err != nil {
				t.Fatal(err)
			}
		case chunk:
			verdicts, out = p.ApplyUsage(&e.h, e.recs, nil, verdicts, out)
		}
	}
	return out
}

// Replaying the log from scratch, or from a snapshot taken mid-way, gives
// the same state and the same emitted events.
func TestReplayIsDeterministic(t *testing.T) {
	log := genLog(7, 20000)
	a, b := NewPartition(), NewPartition()
	outA := fold(t, a, log)
	outB := fold(t, b, log)
	if !reflect.DeepEqual(outA, outB) {
		t.Fatal("two folds of one log emitted different events")
	}
	kinds := map[EmittedType]bool{}
	for _, e := range outA {
		kinds[e.Type] = true
	}
	for _, k := range []EmittedType{EmitStopped, EmitResumed, EmitStopCleared, EmitCancelled, EmitCharged, EmitArrearsEntered,
		EmitWarning, EmitUsageAdjusted, EmitUsageConflict, EmitCommandRefused, EmitRenewed} {
		if !kinds[k] {
			t.Errorf("the generated log never emitted %s: too tame to test replay", k)
		}
	}
	snapA, _ := a.MarshalSnapshot()
	snapB, _ := b.MarshalSnapshot()
	if !bytes.Equal(snapA, snapB) {
		t.Fatal("two folds of one log gave different state")
	}

	mid := len(log) / 2
	c := NewPartition()
	outC := fold(t, c, log[:mid])
	s, err := c.MarshalSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	d, err := UnmarshalSnapshot(s)
	if err != nil {
		t.Fatal(err)
	}
	outC = append(outC, fold(t, d, log[mid:])...)
	if !reflect.DeepEqual(outA, outC) {
		t.Fatal("a fold resumed from a snapshot emitted different events")
	}
	snapD, _ := d.MarshalSnapshot()
	if !bytes.Equal(snapA, snapD) {
		t.Fatal("a fold resumed from a snapshot reached a different state")
	}
}
