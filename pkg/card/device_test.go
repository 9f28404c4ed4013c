package card

import (
	"testing"
)

const (
	imeiA   = "490154203237518"  // 14 digits and its Luhn check digit
	imeiASV = "4901542032375199" // the same device as an IMEISV (14 digits and a software version)
	imeiB   = "356938035643809"
	imeiC   = "352099001761481"
)

// Device binding: a card bound at provisioning and opted in to the stop
// is stopped the first time its usage shows another device, with the
// record as the cause; the event comes once per new device; the same
// device by its IMEISV is no change; records without an IMEI prove
// nothing; a resume is the operator's, and so is a rebind, which binds
// the new device and lifts the stop.
func TestDeviceBindingStopsACardInAnotherDevice(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "p", QuotaBytes: 100 * mb})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", IMEI: imeiA, StopOnIMEIChange: true})
	w.take()
	if v := w.view(ic(1)); v.IMEI != imeiA[:14] || v.LastIMEI != imeiA[:14] || !v.StopOnIMEIChange || v.BindFirstSeen {
		t.Fatalf("bound at provisioning: %+v", v)
	}
	w.useIn(ic(1), "r1", "2026-03-05T01:00:00+08:00", mb, imeiA)
	w.useIn(ic(1), "r2", "2026-03-05T02:00:00+08:00", mb, imeiASV)
	w.use(ic(1), "r3", "2026-03-05T03:00:00+08:00", mb)
	w.useIn(ic(1), "r4", "2026-03-05T04:00:00+08:00", mb, "not-an-imei-at-all")
	if out := w.take(); len(of(out, EmitIMEIChanged))+len(of(out, EmitStopped)) != 0 {
		t.Fatalf("its own device, by IMEISV, or none: %+v", out)
	}
	w.wantStatus(ic(1), InService)

	w.useIn(ic(1), "r5", "2026-03-05T05:00:00+08:00", mb, imeiB)
	out := w.take()
	ch := of(out, EmitIMEIChanged)
	if len(ch) != 1 || ch[0].IMEI != imeiB[:14] || ch[0].BoundIMEI != imeiA[:14] || ch[0].PreviousIMEI != imeiA[:14] || ch[0].Cause != "record:cmcc/r5" {
		t.Fatalf("imei_changed: %+v", out)
	}
	if st := of(out, EmitStopped); len(st) != 1 || st[0].Reason != ReasonDeviceMismatch || st[0].Cause != "record:cmcc/r5" {
		t.Fatalf("the stop: %+v", out)
	}
	w.wantStatus(ic(1), Stopped, ReasonDeviceMismatch)
	// the same stranger again: told once
	w.useIn(ic(1), "r6", "2026-03-05T06:00:00+08:00", mb, imeiB)
	if out := w.take(); len(of(out, EmitIMEIChanged)) != 0 {
		t.Fatalf("the same new device twice: %+v", out)
	}
	// back in its own device: the stop stands (an operator's to lift)
	w.useIn(ic(1), "r7", "2026-03-05T07:00:00+08:00", mb, imeiA)
	w.wantStatus(ic(1), Stopped, ReasonDeviceMismatch)
	// a third device after its own: told
	w.useIn(ic(1), "r8", "2026-03-05T08:00:00+08:00", mb, imeiC)
	if ch := of(w.take(), EmitIMEIChanged); len(ch) != 1 || ch[0].PreviousIMEI != imeiA[:14] || ch[0].IMEI != imeiC[:14] {
		t.Fatalf("a third device: %+v", ch)
	}
	// a rebind binds the new device and lifts the stop
	w.in(Input{Type: TypeRebindRequested, Rebind: &Rebind{ICCID: ic(1), IMEI: imeiC, Operator: "ops", Note: "swapped the modem"}})
	out = w.take()
	if rb := of(out, EmitRebound); len(rb) != 1 || rb[0].IMEI != imeiC[:14] || rb[0].BoundIMEI != imeiA[:14] || rb[0].Operator != "ops" {
		t.Fatalf("rebound: %+v", out)
	}
	if rs := of(out, EmitResumed); len(rs) != 1 || rs[0].Reason != ReasonDeviceMismatch || rs[0].Operator != "ops" {
		t.Fatalf("resumed by the rebind: %+v", out)
	}
	w.wantStatus(ic(1), InService)
	w.useIn(ic(1), "r9", "2026-03-05T09:00:00+08:00", mb, imeiC)
	if out := w.take(); len(of(out, EmitIMEIChanged)) != 0 {
		t.Fatalf("the rebound device: %+v", out)
	}
	// another stranger, then a resume lifts the stop too
	w.useIn(ic(1), "r10", "2026-03-05T10:00:00+08:00", mb, imeiB)
	w.wantStatus(ic(1), Stopped, ReasonDeviceMismatch)
	w.command(TypeResumeRequested, ic(1), "res1")
	w.wantStatus(ic(1), InService)
}

// Binding to the first device seen, from the plan; without the stop a new
// device is told and the card keeps working; without any binding nothing
// is told.
func TestDeviceBindingFirstSeenAndWithoutTheStop(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "bind", QuotaBytes: 100 * mb, BindIMEI: BindFirstSeen})
	w.plan(PlanChanged{PlanID: "free", QuotaBytes: 100 * mb})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "bind"})
	w.card(CardProvisioned{ICCID: ic(2), AccountID: "a", PlanID: "free"})
	w.card(CardProvisioned{ICCID: ic(3), AccountID: "a", PlanID: "free", BindIMEI: BindFirstSeen, StopOnIMEIChange: true})
	w.take()
	for i, card := range []string{ic(1), ic(2), ic(3)} {
		w.use(card, "none"+card, "2026-03-05T00:30:00+08:00", mb) // no IMEI: binds nothing
		w.useIn(card, "a"+card, "2026-03-05T01:00:00+08:00", mb, imeiA)
		w.useIn(card, "b"+card, "2026-03-05T02:00:00+08:00", mb, imeiB)
		out := w.take()
		ch := of(out, EmitIMEIChanged)
		switch i {
		case 0: // bound by its plan to A; B is told, the card keeps working
			if len(ch) != 1 || ch[0].BoundIMEI != imeiA[:14] || len(of(out, EmitStopped)) != 0 {
				t.Fatalf("first seen by the plan: %+v", out)
			}
			w.wantStatus(card, InService)
		case 1: // bound to nothing: nothing told
			if len(ch) != 0 {
				t.Fatalf("no binding: %+v", out)
			}
			if v := w.view(card); v.IMEI != "" || v.LastIMEI != imeiB[:14] {
				t.Fatalf("no binding, last seen B: %+v", v)
			}
		case 2: // the card's own options: bound to A, stopped by B
			if len(ch) != 1 || len(of(out, EmitStopped)) != 1 {
				t.Fatalf("the card's own options: %+v", out)
			}
			w.wantStatus(card, Stopped, ReasonDeviceMismatch)
		}
	}
	// a rebind of an unknown card is refused; of a bad IMEI, refused
	w.in(Input{Type: TypeRebindRequested, ID: "rb-x", Rebind: &Rebind{ICCID: ic(9), IMEI: imeiC, Operator: "ops"}})
	w.in(Input{Type: TypeRebindRequested, ID: "rb-y", Rebind: &Rebind{ICCID: ic(3), IMEI: "123", Operator: "ops"}})
	out := w.take()
	if len(of(out, EmitCommandRefused)) != 1 || len(of(out, EmitInputRefused)) != 1 || len(of(out, EmitRebound)) != 0 {
		t.Fatalf("refused rebinds: %+v", out)
	}
	// a provisioning with a bad IMEI or binding is refused
	w.card(CardProvisioned{ICCID: ic(4), AccountID: "a", PlanID: "free", IMEI: "12ab"})
	w.card(CardProvisioned{ICCID: ic(5), AccountID: "a", PlanID: "free", BindIMEI: "always"})
	if out := w.take(); len(of(out, EmitInputRefused)) != 2 {
		t.Fatalf("bad binding at provisioning: %+v", out)
	}
}

// The IMEI check digit is checked at provisioning; devices compare by
// their first 14 digits.
func TestIMEIs(t *testing.T) {
	for imei, want := range map[string]string{imeiA: "", imeiB: "", imeiC: "", "490154203237519": "check digit is wrong (Luhn)",
		"49015420323751": "must be 15 digits (14 and a check digit)", "49015420323751x": "must be digits only"} {
		if got := ValidateIMEI(imei); got != want {
			t.Errorf("ValidateIMEI(%s) = %q, want %q", imei, got, want)
		}
	}
	if deviceOf(imeiA) != deviceOf(imeiASV) || deviceOf(imeiA) == deviceOf(imeiB) || deviceOf("00000000000000") != 0 ||
		deviceOf("00000000123456") != 0 || deviceOf("1234") != 0 {
		t.Fatal("devices by the first 14 digits; none for a zero TAC or a short number")
	}
	if d := deviceOf("01000000000001"); d.String() != "01000000000001" {
		t.Fatalf("device %q", d.String())
	}
}

// After a rebind, a late record of a session that started before it (the
// old device's, delivered late) proves nothing; one that started after
// does. A late record of a closed cycle is told but stops nothing now. An
// IMEI of zeros (carriers' "unknown") is no device.
func TestDeviceBindingLateRecordsAndFillers(t *testing.T) {
	w := newWorld(t, "2026-03-05T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "p", QuotaBytes: 100 * mb, StopOnIMEIChange: true})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p", IMEI: imeiA})
	w.take()
	w.tick("2026-03-05T12:00:00+08:00")
	w.in(Input{Type: TypeRebindRequested, Rebind: &Rebind{ICCID: ic(1), IMEI: imeiB, Operator: "ops"}})
	w.take()
	w.useIn(ic(1), "old", "2026-03-05T11:00:00+08:00", mb, imeiA) // before the rebind: nothing
	w.useIn(ic(1), "zero", "2026-03-05T13:00:00+08:00", mb, "000000000000000")
	if out := w.take(); len(of(out, EmitIMEIChanged))+len(of(out, EmitStopped)) != 0 {
		t.Fatalf("a record from before the rebind, or of no device: %+v", out)
	}
	w.wantStatus(ic(1), InService)
	if v := w.view(ic(1)); v.LastIMEI != imeiB[:14] {
		t.Fatalf("the filler is no device seen: %+v", v)
	}
	// April: a late March record of another device is told, and stops nothing
	w.tick("2026-04-02T00:00:00+08:00")
	w.take()
	w.useIn(ic(1), "late", "2026-03-30T10:00:00+08:00", mb, imeiC)
	out := w.take()
	if len(of(out, EmitIMEIChanged)) != 1 || len(of(out, EmitStopped)) != 0 {
		t.Fatalf("a late record of another device: %+v", out)
	}
	w.wantStatus(ic(1), InService)
	w.useIn(ic(1), "now", "2026-04-02T10:00:00+08:00", mb, imeiA) // a stranger now: stopped
	w.wantStatus(ic(1), Stopped, ReasonDeviceMismatch)
}
