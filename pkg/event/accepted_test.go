package event

import (
	"reflect"
	"testing"
)

func TestAcceptedRoundTrip(t *testing.T) {
	a := &Accepted{Partition: 3, Seq: 1 << 40, Carrier: "cmcc", ReceivedAt: 1773100000, Rows: []AcceptedRow{
		{Index: 0, RecordID: "r1", ICCID: "89860000000000000019", AccountID: "a", PlanID: "p", Start: 1773000000, End: 1773000600,
			BytesUp: 1, BytesDown: 1 << 40, Sequence: 7, SessionID: "s", APN: "cmiot", RAT: "NB-IoT", IMEI: "35", CellID: "c", CycleStart: 1772294400, Late: true},
		{Index: 4095, RecordID: "r2", ICCID: "89860000000000000027", Start: 5, End: 5},
	}}
	b, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalAccepted(b)
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for i := range b {
		if _, err := UnmarshalAccepted(b[:i]); err == nil {
			t.Fatalf("a message cut at %d bytes decoded", i)
		}
		if _, err := UnmarshalAcceptedView(b[:i]); err == nil {
			t.Fatalf("a message cut at %d bytes decoded as a view", i)
		}
	}
	view, err := UnmarshalAcceptedView(b)
	if err != nil || !reflect.DeepEqual(view, a) {
		t.Fatalf("view: %+v %v", view, err)
	}
	// a view shares the message's bytes; a copy does not
	copied, _ := UnmarshalAccepted(b)
	for i := range b {
		b[i] = 'x'
	}
	if view.Rows[0].APN == "cmiot" || copied.Rows[0].APN != "cmiot" {
		t.Fatalf("view %q, copy %q after the message changed", view.Rows[0].APN, copied.Rows[0].APN)
	}
}

// The view allocates only the message and its rows, not a string per field.
func TestAcceptedViewAllocations(t *testing.T) {
	a := &Accepted{Carrier: "cmcc"}
	for i := 0; i < 100; i++ {
		a.Rows = append(a.Rows, AcceptedRow{Index: i, RecordID: "r", ICCID: "89860000000000000019", AccountID: "a", PlanID: "p", APN: "cmiot"})
	}
	b, _ := a.Marshal()
	if n := testing.AllocsPerRun(20, func() { _, _ = UnmarshalAcceptedView(b) }); n > 2 {
		t.Fatalf("%.0f allocations for a 100-row view, want at most 2", n)
	}
	if n := testing.AllocsPerRun(20, func() { _, _ = UnmarshalAccepted(b) }); n < 100 {
		t.Fatalf("%.0f allocations for a 100-row copy: the test no longer tells the two apart", n)
	}
}

func FuzzUnmarshalAccepted(f *testing.F) {
	b, _ := (&Accepted{Carrier: "c", Rows: []AcceptedRow{{RecordID: "r"}}}).Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := UnmarshalAccepted(in)
		v, verr := UnmarshalAcceptedView(in)
		if (err == nil) != (verr == nil) || (err == nil && !reflect.DeepEqual(a, v)) {
			t.Fatalf("copy %+v (%v) and view %+v (%v) differ", a, err, v, verr)
		}
		if err != nil {
			return
		}
		if _, err := a.Marshal(); err != nil {
			t.Fatal(err)
		}
	})
}
