package actuate

import (
	"context"
	"fmt"
	"testing"
)

// carrierList is a carrier's cards for Reconcile, two a page.
type carrierList struct {
	Driver
	cards []CarrierCard
}

func (c carrierList) States(_ context.Context, cursor string) ([]CarrierCard, string, error) {
	var from int
	fmt.Sscan(cursor, &from) //nolint:errcheck // ours
	to := min(from+2, len(c.cards))
	next := ""
	if to < len(c.cards) {
		next = fmt.Sprint(to)
	}
	return c.cards[from:to], next, nil
}

// Each kind of drift is found over pages; a cancelled card the carrier no
// longer lists agrees (a carrier forgets cancelled cards), one it still
// has active is drift; another carrier's cards are not compared; the mend
// is asked for the two mendable kinds only.
func TestReconcileKinds(t *testing.T) {
	carrier := carrierList{cards: []CarrierCard{
		{ICCID: "c1", Active: true},  // stopped here
		{ICCID: "c2", Active: false}, // in service here
		{ICCID: "c3", Active: true},  // agrees
		{ICCID: "c5", Active: true},  // cancelled here, still active there
		{ICCID: "x9", Active: true},  // not cardmeter's
	}}
	ours := []CardmeterCard{
		{ICCID: "c1", Carrier: "cmcc", Status: "stopped"}, {ICCID: "c2", Carrier: "cmcc", Status: "in_service"},
		{ICCID: "c3", Carrier: "cmcc", Status: "in_service"}, {ICCID: "c4", Carrier: "cmcc", Status: "in_service"},
		{ICCID: "c5", Carrier: "cmcc", Status: "cancelled"}, {ICCID: "c6", Carrier: "cmcc", Status: "cancelled"},
		{ICCID: "u1", Carrier: "unicom", Status: "stopped"},
	}
	list := func(_ context.Context, cursor string) ([]CardmeterCard, string, error) {
		if cursor == "" {
			return ours[:4], "4", nil
		}
		return ours[4:], "", nil
	}
	var mended []string
	d, err := Reconcile(context.Background(), "cmcc", carrier, list, func(_ context.Context, c CardmeterCard, kind string) error {
		mended = append(mended, c.ICCID+":"+kind)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{DriftActiveAtCarrier: "[c1 c5]", DriftInactiveAtCarrier: "[c2]", DriftMissingAtCarrier: "[c4]", DriftUnknownToCardmeter: "[x9]"}
	for k, v := range want {
		if fmt.Sprint(d.Cards[k]) != v {
			t.Errorf("%s: %v, want %s", k, d.Cards[k], v)
		}
	}
	if d.Compared != 6 || d.Sent != 3 || fmt.Sprint(mended) != "[c1:active_at_carrier c2:inactive_at_carrier c5:active_at_carrier]" || d.Unmendable() != 2 {
		t.Fatalf("compared %d, sent %d, mended %v, unmendable %d", d.Compared, d.Sent, mended, d.Unmendable())
	}
}
