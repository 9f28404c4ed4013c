package card

import (
	"fmt"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// world folds hand-written events into a partition for the rule tests.
type world struct {
	t   *testing.T
	p   *Partition
	out []Emitted
	now int64
	n   int
}

func newWorld(t *testing.T, start string) *world {
	w := &world{t: t, p: NewPartition()}
	w.tick(start)
	return w
}

func ic(n int) string {
	p := fmt.Sprintf("898600%013d", n)
	return p + string(cdr.LuhnDigit(p))
}

func (w *world) in(in Input) {
	w.t.Helper()
	w.n++
	if in.ID == "" {
		in.ID = fmt.Sprint("e", w.n)
	}
	if in.At == 0 {
		in.At = w.now
	}
	var err error
	if w.out, err = w.p.Apply(&in, w.out); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) tick(at string) {
	w.t.Helper()
	w.now = unix(at)
	w.in(Input{Type: TypeClockTicked, At: w.now})
}

func (w *world) plan(pc PlanChanged) { w.in(Input{Type: TypePlanChanged, Plan: &pc}) }

func (w *world) card(cp CardProvisioned) { w.in(Input{Type: TypeCardProvisioned, Card: &cp}) }

func (w *world) account(ac AccountChanged) { w.in(Input{Type: TypeAccountChanged, Account: &ac}) }

func (w *world) pay(acct, id string, fen int64) {
	w.in(Input{Type: TypePaymentReceived, Payment: &Payment{AccountID: acct, PaymentID: id, AmountFen: fen}})
}

func (w *world) command(t InputType, iccid, id string) {
	w.in(Input{Type: t, ID: id, Command: &ManualCommand{ICCID: iccid, Operator: "ops@acme", Note: "device parked"}})
}

func (w *world) use(iccid, id, start string, bytes uint64) Verdict {
	w.t.Helper()
	return w.useRecord(cdr.Record{RecordID: id, ICCID: iccid, BytesDown: bytes}, start)
}

// useIn is use in a device (an IMEI).
func (w *world) useIn(iccid, id, start string, bytes uint64, imei string) Verdict {
	w.t.Helper()
	return w.useRecord(cdr.Record{RecordID: id, ICCID: iccid, BytesDown: bytes, IMEI: imei}, start)
}

func (w *world) useRecord(rec cdr.Record, start string) Verdict {
	w.t.Helper()
	s := unix(start)
	rec.Start, rec.End = s, s+60
	var v []Verdict
	v, w.out = w.p.ApplyUsage(&cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: max(w.now, s+60)}, []cdr.Record{rec}, nil, nil, w.out)
	return v[0]
}

// take returns what was emitted since the last take.
func (w *world) take() []Emitted {
	o := w.out
	w.out = nil
	return o
}

func of(evs []Emitted, t EmittedType) []Emitted {
	var r []Emitted
	for _, e := range evs {
		if e.Type == t {
			r = append(r, e)
		}
	}
	return r
}

func (w *world) view(iccid string) View {
	w.t.Helper()
	v, ok := w.p.Card(iccid)
	if !ok {
		w.t.Fatalf("no card %s", iccid)
	}
	return v
}

func (w *world) wantStatus(iccid string, s Status, reasons ...Reason) {
	w.t.Helper()
	v := w.view(iccid)
	var want Reasons
	for _, r := range reasons {
		want = want.With(r)
	}
	if v.Status != s || v.Reasons != want {
		w.t.Fatalf("card %s: %s %v, want %s %v", iccid, v.Status, v.Reasons, s, want)
	}
}

func fmtT(t int64) string { return time.Unix(t, 0).UTC().Format(time.RFC3339) }
