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
	}
}

func FuzzUnmarshalAccepted(f *testing.F) {
	b, _ := (&Accepted{Carrier: "c", Rows: []AcceptedRow{{RecordID: "r"}}}).Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := UnmarshalAccepted(in)
		if err != nil {
			return
		}
		if _, err := a.Marshal(); err != nil {
			t.Fatal(err)
		}
	})
}
