package card

import (
	"slices"
	"testing"
)

const mb = uint64(MB)

func basicPlan() PlanChanged {
	return PlanChanged{PlanID: "p", QuotaBytes: 10 * mb, TimeZone: "Asia/Shanghai"}
}

// DOMAIN.md §1 人工停用/人工复机: an operator stops and resumes by hand; who
// and why are kept; a resume clears only the manual stop.
func TestManualStopAndResume(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(basicPlan())
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", AutoStopOverQuota: true})
	w.take()
	w.command(TypeStopRequested, ic(1), "stop-1")
	st := of(w.take(), EmitStopped)
	if len(st) != 1 || st[0].Reason != ReasonManual || st[0].Operator != "ops@acme" || st[0].Note != "device parked" || st[0].Cause != "event:stop-1" {
		t.Fatalf("manual stop: %+v", st)
	}
	w.wantStatus(ic(1), Stopped, ReasonManual)
	if lc := w.view(ic(1)).LastCommand; lc != (CommandOutcome{ID: "stop-1", Applied: true}) {
		t.Fatalf("last command %+v", lc)
	}
	w.command(TypeStopRequested, ic(1), "stop-2") // again: nothing new
	if len(of(w.take(), EmitStopped)) != 0 {
		t.Fatal("a repeated stop emitted again")
	}
	w.command(TypeResumeRequested, ic(1), "resume-1")
	if r := of(w.take(), EmitResumed); len(r) != 1 || r[0].Reason != ReasonManual {
		t.Fatalf("manual resume: %+v", r)
	}
	w.wantStatus(ic(1), InService)
}

// DOMAIN.md §1: a manual stop is refused while the account is in arrears,
// the card is over quota, or its plan has expired; a cancelled card takes
// no command at all. Each refusal has a typed code.
func TestManualCommandRefusals(t *testing.T) {
	cases := []struct {
		name  string
		setup func(w *world)
		code  string
	}{
		{"over quota", func(w *world) { w.use(ic(1), "r", "2026-03-05T01:00:00+08:00", 11*mb) }, RefusedOverQuota},
		{"in arrears", func(w *world) {
			w.in(Input{Type: TypeChargeRequested, Charge: &Charge{AccountID: "a", ChargeID: "c", AmountFen: 1}})
		}, RefusedInArrears},
		{"expired", func(w *world) { w.tick("2026-04-02T00:00:00+08:00") }, RefusedExpired},
		{"cancelled", func(w *world) { w.tick("2026-08-02T00:00:00+08:00") }, RefusedCancelled},
		{"unknown card", func(w *world) {}, RefusedUnknownCard},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, "2026-03-05T00:00:00+08:00")
			w.plan(basicPlan())
			w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", AutoStopOverQuota: true, ValidUntil: unix("2026-04-01T00:00:00+08:00")})
			c.setup(w)
			before := w.view(ic(1)).Reasons
			target := ic(1)
			if c.code == RefusedUnknownCard {
				target = ic(9)
			}
			for _, typ := range []InputType{TypeStopRequested, TypeResumeRequested} {
				w.take()
				w.command(typ, target, "cmd")
				out := w.take()
				ref := of(out, EmitCommandRefused)
				if len(ref) != 1 || ref[0].Code != c.code {
					t.Fatalf("%s: refusals %+v, want code %s", typ, out, c.code)
				}
				if len(of(out, EmitStopped))+len(of(out, EmitResumed))+len(of(out, EmitStopCleared)) != 0 {
					t.Fatalf("%s: a refused command changed the card: %+v", typ, out)
				}
			}
			if w.view(ic(1)).Reasons != before {
				t.Fatal("a refused command changed the stop reasons")
			}
			if c.code != RefusedUnknownCard {
				if lc := w.view(ic(1)).LastCommand; lc.Applied || lc.Code != c.code {
					t.Fatalf("last command %+v", lc)
				}
			}
		})
	}
}

// Stop reasons are a set: clearing one never clears another; the card is
// back in service only when the last is cleared.
func TestStopReasonsAreASet(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(basicPlan())
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", AutoStopOverQuota: true})
	w.command(TypeStopRequested, ic(1), "s")
	w.use(ic(1), "r1", "2026-03-05T01:00:00+08:00", 11*mb) // over quota while stopped by hand
	w.wantStatus(ic(1), Stopped, ReasonManual, ReasonOverQuota)
	w.take()
	w.tick("2026-04-01T00:00:00+08:00")
	out := w.take()
	if c := of(out, EmitStopCleared); len(c) != 1 || c[0].Reason != ReasonOverQuota || c[0].Reasons != Reasons(ReasonManual) {
		t.Fatalf("rollover: %+v", out)
	}
	if len(of(out, EmitResumed)) != 0 {
		t.Fatal("resumed while stopped by hand")
	}
	w.wantStatus(ic(1), Stopped, ReasonManual)
	w.command(TypeResumeRequested, ic(1), "r")
	w.wantStatus(ic(1), InService)
}

// DOMAIN.md §2: a card without the option keeps working; usage past the
// quota is rated at the overage price per MB begun and charged.
func TestOverageIsCharged(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	pl := basicPlan()
	pl.OverageFenPerMB = 30
	w.plan(pl)
	w.account(AccountChanged{AccountID: "a", CreditLimitFen: 1000})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.take()
	w.use(ic(1), "r1", "2026-03-05T01:00:00+08:00", 10*mb)
	if c := of(w.take(), EmitCharged); len(c) != 0 {
		t.Fatalf("charged at exactly the quota: %+v", c)
	}
	w.use(ic(1), "r2", "2026-03-05T02:00:00+08:00", 1) // one byte over: one MB begun
	w.use(ic(1), "r3", "2026-03-05T03:00:00+08:00", mb-1)
	w.use(ic(1), "r4", "2026-03-05T04:00:00+08:00", 1)
	ch := of(w.take(), EmitCharged)
	if len(ch) != 2 || ch[0].Amount != 30 || ch[1].Amount != 30 || ch[0].Detail != "overage" || ch[1].Balance != -60 {
		t.Fatalf("overage charges: %+v", ch)
	}
	w.wantStatus(ic(1), InService)
}

// DOMAIN.md §3 欠费停机: below the credit limit every card of the account
// stops; a payment back to zero makes them resumable by hand, or resumes
// them when the account opted in.
func TestArrears(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(map[bool]string{false: "manual resume", true: "auto resume"}[auto], func(t *testing.T) {
			w := newWorld(t, "2026-03-05T00:00:00+08:00")
			pl := basicPlan()
			pl.MonthlyFeeFen = 1000
			w.plan(pl)
			w.account(AccountChanged{AccountID: "a", CreditLimitFen: 1500, AutoResumeOnPayment: auto})
			w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"}) // -1000: within credit
			w.card(CardProvisioned{ICCID: ic(2), AccountID: "a", PlanID: "p"}) // -2000: in arrears
			w.card(CardProvisioned{ICCID: ic(3), AccountID: "b", PlanID: "p"}) // another account
			out := w.take()
			if ar := of(out, EmitArrearsEntered); len(ar) != 2 || ar[0].AccountID != "a" || ar[0].Balance != -2000 || ar[1].AccountID != "b" {
				t.Fatalf("no arrears: %+v", out)
			}
			w.wantStatus(ic(1), Stopped, ReasonArrears)
			w.wantStatus(ic(2), Stopped, ReasonArrears)
			if v := w.view(ic(3)); v.Status != Stopped || v.Account.BalanceFen != -1000 {
				// account b: -1000 with no credit limit is arrears too
				t.Fatalf("card 3: %+v", v)
			}
			w.pay("a", "pay-1", 1500) // -500: still below zero
			if len(of(w.take(), EmitArrearsCleared)) != 0 {
				t.Fatal("arrears cleared below zero")
			}
			w.pay("a", "pay-2", 500)
			w.pay("a", "pay-2", 500) // the same payment again counts once
			out = w.take()
			if len(of(out, EmitArrearsCleared)) != 1 || w.view(ic(1)).Account.BalanceFen != 0 {
				t.Fatalf("payment to zero: %+v", out)
			}
			if auto {
				w.wantStatus(ic(1), InService)
				w.wantStatus(ic(2), InService)
				return
			}
			w.wantStatus(ic(1), Stopped, ReasonArrears)
			w.command(TypeResumeRequested, ic(1), "r")
			w.wantStatus(ic(1), InService)
			w.wantStatus(ic(2), Stopped, ReasonArrears)
		})
	}
}

// DOMAIN.md "Plans and accounts": the monthly fee is charged at each cycle
// start (and for the first cycle at provisioning).
func TestMonthlyFee(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	pl := basicPlan()
	pl.MonthlyFeeFen = 700
	w.plan(pl)
	w.pay("a", "p0", 10000)
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.tick("2026-06-15T00:00:00+08:00") // three cycle starts: April, May, June
	fees := of(w.take(), EmitCharged)
	if len(fees) != 4 || fees[3].Balance != 10000-4*700 || fees[1].At != unix("2026-04-01T00:00:00+08:00") {
		t.Fatalf("fees: %+v", fees)
	}
}

// DOMAIN.md §4 过期停机: the validity end stops the card; while expired the
// keep-number fee is charged monthly; a renewal within three months resumes
// it; three months after expiry it is cancelled, finally.
func TestExpiryRenewalAndCancellation(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "p", QuotaBytes: 10 * mb, MonthlyFeeFen: 100, TermMonths: 1})
	w.pay("a", "p0", 100000)
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"}) // valid until 2026-04-05
	if v := w.view(ic(1)); v.ValidUntil != unix("2026-04-05T00:00:00+08:00") {
		t.Fatalf("validity from the plan's term: %+v", v)
	}
	w.take()
	w.tick("2026-04-05T00:00:00+08:00")
	out := w.take()
	if st := of(out, EmitStopped); len(st) != 1 || st[0].Reason != ReasonExpiry || st[0].At != unix("2026-04-05T00:00:00+08:00") {
		t.Fatalf("expiry: %+v", out)
	}
	if v := w.view(ic(1)); v.ExpiredAt == 0 || v.CancelAt != unix("2026-07-05T00:00:00+08:00") {
		t.Fatalf("expired at %d, to be cancelled at %s", v.ExpiredAt, fmtT(v.CancelAt))
	}
	w.tick("2026-05-01T00:00:00+08:00")
	ch := of(w.take(), EmitCharged)
	if len(ch) != 1 || ch[0].Amount != KeepNumberFeeFen || ch[0].Detail != "keep_number_fee" {
		t.Fatalf("keep-number fee: %+v", ch)
	}
	w.in(Input{Type: TypeCardRenewed, Renewal: &Renewal{ICCID: ic(1), RenewalID: "rn1", Months: 2}})
	out = w.take()
	if len(of(out, EmitRenewed)) != 1 || len(of(out, EmitResumed)) != 1 {
		t.Fatalf("renewal: %+v", out)
	}
	w.wantStatus(ic(1), InService)
	if v := w.view(ic(1)); v.ValidUntil != unix("2026-07-01T00:00:00+08:00") {
		t.Fatalf("renewed from the renewal's time: %s", fmtT(v.ValidUntil))
	}
	// expires again, and is not renewed: cancelled three months later
	w.tick("2026-07-01T00:00:00+08:00")
	if v := w.view(ic(1)); v.CancelAt != unix("2026-10-01T00:00:00+08:00") {
		t.Fatalf("expired again: to be cancelled at %s", fmtT(v.CancelAt))
	}
	w.tick("2026-09-30T00:00:00+08:00")
	w.take()
	w.tick("2026-10-01T00:00:00+08:00")
	out = w.take()
	if c := of(out, EmitCancelled); len(c) != 1 || c[0].At != unix("2026-10-01T00:00:00+08:00") {
		t.Fatalf("cancellation: %+v", out)
	}
	if v := w.view(ic(1)); v.Status != Cancelled || v.CancelAt != 0 {
		t.Fatalf("status %s, cancel at %d", v.Status, v.CancelAt)
	}
	// final: nothing applies to it any more
	if v := w.use(ic(1), "late", "2026-10-01T01:00:00+08:00", 5); v.Status != CardCancelled {
		t.Fatalf("usage for a cancelled card: %v", v.Status)
	}
	w.in(Input{Type: TypeCardRenewed, Renewal: &Renewal{ICCID: ic(1), RenewalID: "rn2", Months: 12}})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.command(TypeResumeRequested, ic(1), "x")
	w.tick("2027-02-01T00:00:00+08:00")
	out = w.take()
	if len(of(out, EmitInputRefused)) != 2 || len(of(out, EmitCommandRefused)) != 1 || len(of(out, EmitResumed))+len(of(out, EmitCharged)) != 0 {
		t.Fatalf("after cancellation: %+v", out)
	}
	if v := w.view(ic(1)); v.Status != Cancelled {
		t.Fatal("a cancelled card came back")
	}
}

// DOMAIN.md "Early warnings": usage thresholds fire once per cycle and
// resolve (and re-arm) at the next; a plan can set its own thresholds.
func TestUsageWarnings(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "p", QuotaBytes: 100 * mb})
	w.plan(PlanChanged{PlanID: "q", QuotaBytes: 100 * mb, WarningPct: []int{50}})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", AutoStopOverQuota: true})
	w.card(CardProvisioned{ICCID: ic(2), AccountID: "a", PlanID: "q"})
	w.take()
	names := func(evs []Emitted) []string {
		var n []string
		for _, e := range evs {
			if e.Warning != WarnForecast { // the forecast has its own test
				n = append(n, e.ICCID[len(e.ICCID)-2:]+":"+e.Warning)
			}
		}
		return n
	}
	w.use(ic(1), "a1", "2026-03-05T01:00:00+08:00", 79*mb)
	w.use(ic(1), "a2", "2026-03-05T01:01:00+08:00", 11*mb) // 90%: crosses 80 and 90 at once
	w.use(ic(1), "a3", "2026-03-05T01:02:00+08:00", 1*mb)
	w.use(ic(1), "a4", "2026-03-05T01:03:00+08:00", 9*mb) // 100%
	w.use(ic(2), "b1", "2026-03-05T01:00:00+08:00", 60*mb)
	got := names(of(w.take(), EmitWarning))
	want := []string{ic(1)[18:] + ":usage_80", ic(1)[18:] + ":usage_90", ic(1)[18:] + ":usage_100", ic(2)[18:] + ":usage_50"}
	if !slices.Equal(got, want) {
		t.Fatalf("warnings %v, want %v", got, want)
	}
	if v := w.view(ic(1)); !slices.Equal(v.Warnings, []string{"usage_80", "usage_90", "usage_100", "forecast"}) {
		t.Fatalf("active warnings %v", v.Warnings)
	}
	w.tick("2026-04-01T00:00:00+08:00")
	if r := of(w.take(), EmitWarningResolved); len(r) != 6 {
		t.Fatalf("resolved at rollover: %+v", r)
	}
	w.use(ic(1), "c1", "2026-04-01T01:00:00+08:00", 85*mb)
	if got := names(of(w.take(), EmitWarning)); !slices.Equal(got, []string{ic(1)[18:] + ":usage_80"}) {
		t.Fatalf("re-armed warnings: %v", got)
	}
}

// DOMAIN.md: a forecast warns when the quota will run out before the cycle
// ends at the rate used so far, with the expected date.
func TestForecastWarning(t *testing.T) {
	w := newWorld(t, "2026-04-01T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "p", QuotaBytes: 300 * mb, WarningPct: []int{100}})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.tick("2026-04-03T00:00:00+08:00")
	w.take()
	// 10 MB a day for two days: 300 MB lasts 30 days, to the cycle's end
	w.use(ic(1), "r1", "2026-04-02T23:00:00+08:00", 20*mb)
	if f := of(w.take(), EmitWarning); len(f) != 0 {
		t.Fatalf("forecast at a sustainable rate: %+v", f)
	}
	w.tick("2026-04-05T00:00:00+08:00")
	// then 40 MB more: 60 MB in 4 days runs out after 20 days
	w.use(ic(1), "r2", "2026-04-04T23:00:00+08:00", 40*mb)
	f := of(w.take(), EmitWarning)
	if len(f) != 1 || f[0].Warning != WarnForecast || f[0].Expected != unix("2026-04-21T00:00:00+08:00") {
		t.Fatalf("forecast: %+v (expected %s)", f, fmtT(f[0].Expected))
	}
	w.use(ic(1), "r3", "2026-04-04T23:30:00+08:00", 40*mb)
	if len(of(w.take(), EmitWarning)) != 0 {
		t.Fatal("forecast fired twice in a cycle")
	}
}

// DOMAIN.md: expiry warnings 30, 7 and 1 day ahead, each once; a renewal
// resolves them.
func TestExpiryWarnings(t *testing.T) {
	w := newWorld(t, "2026-03-01T00:00:00+08:00")
	w.plan(basicPlan())
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", ValidUntil: unix("2026-05-01T00:00:00+08:00")})
	var fired []string
	for _, day := range []string{"2026-03-31", "2026-04-01", "2026-04-02", "2026-04-24", "2026-04-25", "2026-04-30"} {
		w.tick(day + "T00:00:00+08:00")
		for _, e := range of(w.take(), EmitWarning) {
			fired = append(fired, day+":"+e.Warning)
		}
	}
	want := []string{"2026-04-01:expiry_30d", "2026-04-24:expiry_7d", "2026-04-30:expiry_1d"}
	if !slices.Equal(fired, want) {
		t.Fatalf("expiry warnings %v, want %v", fired, want)
	}
	w.in(Input{Type: TypeCardRenewed, Renewal: &Renewal{ICCID: ic(1), RenewalID: "r", Months: 12}})
	if r := of(w.take(), EmitWarningResolved); len(r) != 3 {
		t.Fatalf("renewal resolved %+v", r)
	}
}

// DOMAIN.md: a low balance warns once, and a payment that lifts it resolves it.
func TestLowBalanceWarning(t *testing.T) {
	w := newWorld(t, "2026-03-01T00:00:00+08:00")
	w.account(AccountChanged{AccountID: "a", LowBalanceFen: 1000, CreditLimitFen: 100000})
	out := w.take()
	if wr := of(out, EmitAccountWarning); len(wr) != 1 || wr[0].Warning != WarnLowBalance || wr[0].AccountID != "a" {
		t.Fatalf("low balance at 0: %+v", out)
	}
	w.in(Input{Type: TypeChargeRequested, Charge: &Charge{AccountID: "a", ChargeID: "c1", AmountFen: 10}})
	if len(of(w.take(), EmitAccountWarning)) != 0 {
		t.Fatal("warned twice")
	}
	w.pay("a", "p1", 2000)
	if r := of(w.take(), EmitAccountWarningResolved); len(r) != 1 || r[0].Balance != 1990 {
		t.Fatalf("resolved: %+v", r)
	}
}

// DOMAIN.md "Plans and accounts" 流量池: the pool's exhaustion stops every
// opted-in card of the pool with reason pool; it clears when the pool
// grows or at the pool's next cycle.
func TestDataPool(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(basicPlan())
	w.in(Input{Type: TypePoolChanged, Pool: &PoolChanged{PoolID: "pool", AccountID: "a", QuotaBytes: 30 * mb}})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", PoolID: "pool", AutoStopOverQuota: true})
	w.card(CardProvisioned{ICCID: ic(2), AccountID: "a", PlanID: "p", PoolID: "pool", AutoStopOverQuota: true})
	w.card(CardProvisioned{ICCID: ic(3), AccountID: "a", PlanID: "p", PoolID: "pool"})
	w.card(CardProvisioned{ICCID: ic(4), AccountID: "a", PlanID: "p", PoolID: "elsewhere"})
	if len(of(w.take(), EmitInputRefused)) != 1 {
		t.Fatal("a card joined a pool that does not exist")
	}
	w.use(ic(1), "r1", "2026-03-05T01:00:00+08:00", 20*mb) // over its plan's 10 MB: the pool governs
	w.use(ic(3), "r2", "2026-03-05T01:00:00+08:00", 10*mb)
	w.wantStatus(ic(1), InService)
	w.use(ic(3), "r3", "2026-03-05T02:00:00+08:00", 1)
	st := of(w.take(), EmitStopped)
	if len(st) != 2 || st[0].Reason != ReasonPool || st[0].Pool != "pool" {
		t.Fatalf("pool stops: %+v", st)
	}
	w.wantStatus(ic(1), Stopped, ReasonPool)
	w.wantStatus(ic(2), Stopped, ReasonPool)
	w.wantStatus(ic(3), InService)
	w.in(Input{Type: TypePoolChanged, Pool: &PoolChanged{PoolID: "pool", AccountID: "a", QuotaBytes: 50 * mb}})
	if r := of(w.take(), EmitResumed); len(r) != 2 {
		t.Fatalf("pool grew: %+v", r)
	}
	w.use(ic(2), "r4", "2026-03-06T01:00:00+08:00", 25*mb)
	w.wantStatus(ic(2), Stopped, ReasonPool)
	w.tick("2026-04-01T00:00:00+08:00")
	w.wantStatus(ic(1), InService)
	w.wantStatus(ic(2), InService)
	if v, _ := w.p.Pool("pool"); v.UsageBytes != 0 || v.Cards != 3 {
		t.Fatalf("pool after rollover: %+v", v)
	}
}

// DOMAIN.md: interim records of a long session each count, so a stop can
// fire in the middle of the session.
func TestInterimRecordsEachCount(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(basicPlan())
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", AutoStopOverQuota: true})
	w.take()
	for i, start := range []string{"T01:00:00", "T01:15:00", "T01:30:00"} {
		v := w.use(ic(1), "sess-1-"+string(rune('1'+i)), "2026-03-05"+start+"+08:00", 4*mb)
		if v.Status != Accepted {
			t.Fatalf("interim %d: %v", i, v.Status)
		}
	}
	if st := of(w.take(), EmitStopped); len(st) != 1 || st[0].Cause != "record:cmcc/sess-1-3" || st[0].Overshoot != 2*mb {
		t.Fatalf("stop mid-session: %+v", st)
	}
}

// DOMAIN.md: a late record for a closed cycle is an adjustment: its
// overage is charged to that cycle, and it stops nothing now.
func TestLateRecordOverageAdjustment(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	pl := basicPlan()
	pl.OverageFenPerMB = 10
	w.plan(pl)
	w.account(AccountChanged{AccountID: "a", CreditLimitFen: 100000})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.use(ic(1), "r1", "2026-03-20T00:00:00+08:00", 10*mb)
	w.tick("2026-04-02T00:00:00+08:00")
	w.take()
	v := w.use(ic(1), "late", "2026-03-31T23:00:00+08:00", 2*mb)
	out := w.take()
	ch := of(out, EmitCharged)
	if v.Status != Late || len(ch) != 1 || ch[0].Amount != 20 || ch[0].Detail != "overage_adjustment" || len(of(out, EmitUsageAdjusted)) != 1 {
		t.Fatalf("late overage: %v %+v", v.Status, out)
	}
	if w.view(ic(1)).UsageBytes != 0 {
		t.Fatal("a late record counted now")
	}
}
