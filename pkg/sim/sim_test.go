package sim

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

type msg struct {
	subject string
	data    []byte
}

// logOf builds a partition's log: two accounts on a metered plan through
// January and February 2026 (Shanghai), acme's two cards well over their
// quota every day (overage charged, a stop for arrears at times, a
// payment), globex's card quiet; an operator's stop and resume.
func logOf(t testing.TB) []msg {
	var log []msg
	n := 0
	input := func(in card.Input) {
		n++
		in.ID = fmt.Sprint("e", n)
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, msg{broker.BillingSubject(0), b})
	}
	at := func(s string) int64 {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.Unix()
	}
	iccid := func(i int) string {
		p := fmt.Sprintf("8986000000000000%03d", i)
		return p + string(cdr.LuhnDigit(p))
	}
	start := at("2025-12-31T16:00:00Z") // 2026-01-01 Shanghai
	input(card.Input{Type: card.TypeClockTicked, At: start})
	input(card.Input{Type: card.TypePlanChanged, At: start, Plan: &card.PlanChanged{PlanID: "m", QuotaBytes: 100 << 20, MonthlyFeeFen: 1000, OverageFenPerMB: 20}})
	input(card.Input{Type: card.TypePlanChanged, At: start, Plan: &card.PlanChanged{PlanID: "big", QuotaBytes: 1 << 30, MonthlyFeeFen: 3000}})
	input(card.Input{Type: card.TypeAccountChanged, At: start, Account: &card.AccountChanged{AccountID: "acme", CreditLimitFen: 20000, AutoResumeOnPayment: true}})
	input(card.Input{Type: card.TypePaymentReceived, At: start, Payment: &card.Payment{AccountID: "acme", PaymentID: "p0", AmountFen: 10000}})
	for i, a := range []string{"acme", "acme", "globex"} {
		input(card.Input{Type: card.TypeCardProvisioned, At: start, Card: &card.CardProvisioned{ICCID: iccid(i), AccountID: a, PlanID: "m", Carrier: "cmcc"}})
	}
	seq := 0
	for d := 0; d < 59; d++ {
		day := start + int64(d)*86400
		input(card.Input{Type: card.TypeClockTicked, At: day})
		var recs []cdr.Record
		for i := 0; i < 3; i++ {
			bytes := uint64(8 << 20) // acme: 8 MiB a day, 240 a month against 100
			if i == 2 {
				bytes = 1 << 20
			}
			seq++
			recs = append(recs, cdr.Record{RecordID: fmt.Sprint("r", seq), ICCID: iccid(i), Start: day + 3600, End: day + 7200, BytesDown: bytes})
		}
		log = append(log, msg{broker.UsageSubject(0), cdr.AppendChunk(nil, cdr.ChunkHeader{Carrier: "cmcc", BatchID: fmt.Sprint("b", d), ReceivedAt: day + 7300}, recs)})
		switch d {
		case 20:
			input(card.Input{Type: card.TypeStopRequested, At: day + 8000, Command: &card.ManualCommand{ICCID: iccid(1), Operator: "ops"}})
		case 22:
			input(card.Input{Type: card.TypeResumeRequested, At: day + 8000, Command: &card.ManualCommand{ICCID: iccid(1), Operator: "ops"}})
		case 40:
			input(card.Input{Type: card.TypePaymentReceived, At: day + 8000, Payment: &card.Payment{AccountID: "acme", PaymentID: "p1", AmountFen: 50000}})
		}
	}
	input(card.Input{Type: card.TypeClockTicked, At: at("2026-02-28T16:00:00Z")}) // 2026-03-01 Shanghai: February closes
	return log
}

func run(t testing.TB, log []msg, req Request) Result {
	s, err := New(req)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range log {
		if err := s.Apply(m.subject, m.data); err != nil {
			t.Fatal(err)
		}
	}
	return s.Result()
}

// reality folds the whole log (every account) as the projector does and
// reads, for the account's cards, what the simulation reads.
func reality(t testing.TB, log []msg, account string, from, to int64) map[string]*Outcome {
	p := card.NewPartition()
	f := &fold{p: p, cards: map[string]*Outcome{}, open: map[string]int{}}
	s := &Simulator{from: from, to: to}
	for _, m := range log {
		if broker.IsUsageSubject(m.subject) {
			var h cdr.ChunkHeader
			recs, err := cdr.DecodeChunk(m.data, &h, nil)
			if err != nil {
				t.Fatal(err)
			}
			f.usage(&h, recs, s)
			continue
		}
		var in card.Input
		if err := json.Unmarshal(m.data, &in); err != nil {
			t.Fatal(err)
		}
		if err := f.apply(&in, s); err != nil {
			t.Fatal(err)
		}
	}
	out := map[string]*Outcome{}
	for id, o := range f.cards {
		if v, ok := p.Card(id); ok && v.AccountID == account {
			o.TotalFen = o.MonthlyFeeFen + o.OverageFen + o.KeepNumberFen + o.OtherFen
			out[id] = o
		}
	}
	return out
}

// A simulation of the unchanged plan equals reality exactly: each card's
// usage, charges and stops over the period, as the fold of the whole log
// (every account, as the projector folds it) has them.
func TestUnchangedPlanEqualsReality(t *testing.T) {
	log := logOf(t)
	req := Request{AccountID: "acme", From: "2026-01-01T00:00:00+08:00", To: "2026-03-01T00:00:00+08:00"}
	r := run(t, log, req)
	from, _ := time.Parse(time.RFC3339, req.From)
	to, _ := time.Parse(time.RFC3339, req.To)
	real := reality(t, log, "acme", from.Unix(), to.Unix())
	if len(r.Cards) != 2 || len(real) != 2 {
		t.Fatalf("%d cards simulated, %d in reality", len(r.Cards), len(real))
	}
	for _, c := range r.Cards {
		want, _ := json.Marshal(real[c.ICCID])
		got, _ := json.Marshal(c.Actual)
		sim, _ := json.Marshal(c.Simulated)
		if string(got) != string(want) || string(sim) != string(want) {
			t.Fatalf("card %s:\nreality   %s\nreplayed  %s\nsimulated %s", c.ICCID, want, got, sim)
		}
	}
	if r.SavingsFen != 0 || r.Actual.TotalFen == 0 || r.Actual.OverageFen == 0 || r.Actual.UsageBytes != 2*59*(8<<20) {
		t.Fatalf("unchanged: %+v", r.Actual)
	}
	if r.Actual.StopsByReason["manual"] != 1 {
		t.Fatalf("the manual stop is missing: %+v", r.Actual.StopsByReason)
	}
}

// A bigger plan would have been cheaper for an account that paid overage
// every month; a capped one stops the cards instead of charging them; a
// card's list narrows the simulation.
func TestWhatIfPlans(t *testing.T) {
	log := logOf(t)
	base := Request{AccountID: "acme", From: "2026-01-01T00:00:00+08:00", To: "2026-03-01T00:00:00+08:00"}

	big := base
	big.Plan = Override{PlanID: "big"}
	r := run(t, log, big)
	if r.Simulated.OverageFen != 0 || r.Simulated.MonthlyFeeFen != 2*2*3000 || r.SavingsFen <= 0 || r.Cards[0].SimPlanID != "big" {
		t.Fatalf("the bigger plan: actual %+v simulated %+v savings %d", r.Actual, r.Simulated, r.SavingsFen)
	}
	if r.Simulated.UsageBytes != r.Actual.UsageBytes {
		t.Fatalf("usage differs on another plan: %d, %d", r.Simulated.UsageBytes, r.Actual.UsageBytes)
	}

	quota := uint64(300 << 20)
	more := base
	more.Plan = Override{QuotaBytes: &quota}
	if r := run(t, log, more); r.Simulated.OverageFen != 0 || r.Simulated.MonthlyFeeFen != r.Actual.MonthlyFeeFen || r.Cards[0].SimPlanID != "m" {
		t.Fatalf("a bigger quota: %+v", r.Simulated)
	}

	capped := base
	yes := true
	capped.Plan = Override{AutoStopOverQuota: &yes}
	r = run(t, log, capped)
	if overQuota := r.Simulated.StopsByReason["over_quota"]; r.Simulated.OverageFen != 0 || overQuota != 4 { // two cards, two months
		t.Fatalf("capped: %d over-quota stops, %+v", overQuota, r.Simulated)
	}
	if r.Cards[0].Simulated.Stops[0].Reason != "over_quota" || r.Cards[0].Simulated.Stops[0].ClearedAt == "" {
		t.Fatalf("a card's stops: %+v", r.Cards[0].Simulated.Stops)
	}

	// one card of the two on the big plan: the other stays as it was and
	// shares the account's money; the one equals its part of the whole
	one := base
	one.Cards = []string{r.Cards[1].ICCID}
	one.Plan = Override{PlanID: "big"}
	whole := run(t, log, big)
	r = run(t, log, one)
	if len(r.Cards) != 1 || r.Cards[0].ICCID != one.Cards[0] || r.Cards[0].SimPlanID != "big" {
		t.Fatalf("one card: %+v", r.Cards)
	}
	if got, want := fmt.Sprint(r.Cards[0].Actual), fmt.Sprint(whole.Cards[1].Actual); got != want {
		t.Fatalf("one card's actual %s, its part of the whole %s", got, want)
	}

	// a simulated plan that cannot take the cards fails the simulation,
	// rather than leave them out
	neg := int64(-1)
	if _, err := New(Request{AccountID: "acme", From: base.From, To: base.To, Plan: Override{OverageFenPerMB: &neg}}); err == nil {
		t.Fatal("a negative price taken")
	}
	nowhere := base
	pool := "no-such-pool"
	nowhere.Plan = Override{PoolID: &pool}
	s, err := New(nowhere)
	if err != nil {
		t.Fatal(err)
	}
	var failed error
	for _, m := range log {
		if failed = s.Apply(m.subject, m.data); failed != nil {
			break
		}
	}
	if failed == nil || s.Err() == nil {
		t.Fatal("cards put in a pool that is not there: the simulation went on without them")
	}
}

func TestRequestsChecked(t *testing.T) {
	for _, req := range []Request{{}, {AccountID: "a", From: "x", To: "2026-01-01T00:00:00Z"},
		{AccountID: "a", From: "2026-02-01T00:00:00Z", To: "2026-01-01T00:00:00Z"},
		{AccountID: "a", From: "2020-01-01T00:00:00Z", To: "2026-01-01T00:00:00Z"}} {
		if _, err := New(req); err == nil {
			t.Errorf("%+v taken", req)
		}
	}
}
