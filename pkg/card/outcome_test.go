package card

import "testing"

// A carrier's answer to an action is folded into an event of the card
// (its state unchanged); a report for an unknown card or action is
// refused, never applied.
func TestActuationReports(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(basicPlan())
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.command(TypeStopRequested, ic(1), "stop-1")
	w.take()
	w.in(Input{Type: TypeActuationReported, ID: "act-1", Actuation: &ActuationReport{ICCID: ic(1), Action: "stop", Carrier: "cmcc", OK: true, Cause: "event:0-5-0"}})
	ok := of(w.take(), EmitActuationSucceeded)
	if len(ok) != 1 || ok[0].Code != "stop" || ok[0].Carrier != "cmcc" || ok[0].Cause != "event:0-5-0" || !ok[0].Reasons.Has(ReasonManual) || ok[0].AccountID != "a" {
		t.Fatalf("succeeded: %+v", ok)
	}
	w.in(Input{Type: TypeActuationReported, ID: "act-2", Actuation: &ActuationReport{ICCID: ic(1), Action: "resume", Carrier: "cmcc", Detail: "timeout"}})
	if bad := of(w.take(), EmitActuationFailed); len(bad) != 1 || bad[0].Detail != "timeout" || bad[0].Cause != "event:act-2" {
		t.Fatalf("failed: %+v", bad)
	}
	w.wantStatus(ic(1), Stopped, ReasonManual) // the carrier's answer changes nothing here
	w.in(Input{Type: TypeActuationReported, ID: "act-3", Actuation: &ActuationReport{ICCID: ic(9), Action: "stop", OK: true}})
	if r := of(w.take(), EmitInputRefused); len(r) != 1 || r[0].Code != RefusedUnknownCard {
		t.Fatalf("an unknown card: %+v", r)
	}
	w.in(Input{Type: TypeActuationReported, ID: "act-4", Actuation: &ActuationReport{ICCID: ic(1), Action: "explode", OK: true}})
	if r := of(w.take(), EmitInputRefused); len(r) != 1 || r[0].Code != RefusedInvalid {
		t.Fatalf("an unknown action: %+v", r)
	}
	w.in(Input{Type: TypeWebhookDisabled, ID: "wh-1", Webhook: &WebhookNotice{WebhookID: "crm", Reason: "down"}})
	if d := of(w.take(), EmitWebhookDisabled); len(d) != 1 || d[0].Webhook != "crm" || d[0].Detail != "down" {
		t.Fatalf("webhook disabled: %+v", d)
	}
}

// A resync asks for the action the card's state needs at its place in the
// log: stop while stopped, resume once resumed, cancel once cancelled;
// for an unknown card it is refused.
func TestResyncAsksWhatTheStateNeeds(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(basicPlan())
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	resync := func(id string) Emitted {
		t.Helper()
		w.take()
		w.in(Input{Type: TypeResyncRequested, ID: id, Resync: &ResyncRequest{ICCID: ic(1), Reason: "reconcile: active_at_carrier", By: "ops"}})
		got := of(w.take(), EmitResyncRequested)
		if len(got) != 1 || got[0].Cause != "event:"+id || got[0].Detail != "reconcile: active_at_carrier" || got[0].Operator != "ops" || got[0].AccountID != "a" {
			t.Fatalf("resync %s: %+v", id, got)
		}
		return got[0]
	}
	if e := resync("rs-1"); e.Code != "resume" {
		t.Fatalf("in service: %s", e.Code)
	}
	w.command(TypeStopRequested, ic(1), "stop-1")
	if e := resync("rs-2"); e.Code != "stop" || !e.Reasons.Has(ReasonManual) {
		t.Fatalf("stopped: %s %v", e.Code, e.Reasons)
	}
	w.command(TypeResumeRequested, ic(1), "resume-1")
	if e := resync("rs-3"); e.Code != "resume" {
		t.Fatalf("resumed: %s", e.Code)
	}
	w.wantStatus(ic(1), InService) // asking changes nothing
	w.in(Input{Type: TypeResyncRequested, ID: "rs-4", Resync: &ResyncRequest{ICCID: ic(9)}})
	if r := of(w.take(), EmitInputRefused); len(r) != 1 || r[0].Code != RefusedUnknownCard {
		t.Fatalf("an unknown card: %+v", r)
	}
}
