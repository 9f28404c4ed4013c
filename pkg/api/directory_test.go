package api

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

func newTestDirectory(cards int) (*Directory, []string) {
	d := &Directory{log: zap.NewNop()}
	d.init()
	iccids := make([]string, cards)
	for i := range iccids {
		iccids[i] = fmt.Sprintf("8986%016d", i)
		d.putCardLocked(CardEntry{ICCID: iccids[i], AccountID: fmt.Sprint("acct", i%1000), PlanID: "p", Carrier: "cmcc",
			IMSI: fmt.Sprintf("460%012d", i), MSISDN: fmt.Sprintf("1440%09d", i)})
	}
	return d, iccids
}

func TestDirectoryResolve(t *testing.T) {
	d, iccids := newTestDirectory(100)
	for _, c := range []struct{ iccid, imsi, msisdn, want string }{
		{iccids[7], "", "", iccids[7]},
		{"", "460000000000042", "", iccids[42]},
		{"", "", "1440000000099", iccids[99]},
		{iccids[3], "460000000000042", "", iccids[3]}, // the ICCID wins
	} {
		got, ok := d.Resolve(c.iccid, c.imsi, c.msisdn)
		if !ok || got.ICCID != c.want || got.AccountID == "" {
			t.Errorf("Resolve(%q, %q, %q) = %+v, %v; want %s", c.iccid, c.imsi, c.msisdn, got, ok, c.want)
			continue
		}
		iccid, h, carrier, ok := d.Route(c.iccid, c.imsi, c.msisdn)
		if !ok || iccid != c.want || h != broker.AccountHash(got.AccountID) || carrier != got.Carrier || carrier == "" {
			t.Errorf("Route(%q, %q, %q) = %s, %d, %q, %v; want %s of account %s, carrier %q", c.iccid, c.imsi, c.msisdn, iccid, h, carrier, ok, c.want, got.AccountID, got.Carrier)
		}
	}
	if _, ok := d.Resolve("89860000000000000999", "", ""); ok {
		t.Error("an unknown ICCID resolved")
	}
	if _, _, _, ok := d.Route("89860000000000000999", "", ""); ok {
		t.Error("an unknown ICCID routed")
	}
	if _, _, _, ok := d.Route("card-7", "", ""); ok {
		t.Error("an ICCID that does not pack routed")
	}
	if _, ok := d.Resolve("", "460999999999999", ""); ok {
		t.Error("an unknown IMSI resolved")
	}
	// a card re-provisioned on another plan: the newest entry is read
	d.putCardLocked(CardEntry{ICCID: iccids[7], AccountID: "acct7", PlanID: "q"})
	if got, _ := d.Card(iccids[7]); got.PlanID != "q" {
		t.Errorf("after an update: %+v", got)
	}
}

// BenchmarkRoute routes records of a 1M-card fleet in random order, as
// ingest does for every record; BenchmarkResolve finds their entries.
func BenchmarkRoute(b *testing.B) {
	d, iccids, order := benchDirectory()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, _, ok := d.Route(iccids[order[i&(len(order)-1)]], "", ""); !ok {
			b.Fatal("not found")
		}
	}
}

func BenchmarkResolve(b *testing.B) {
	d, iccids, order := benchDirectory()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := d.Resolve(iccids[order[i&(len(order)-1)]], "", ""); !ok {
			b.Fatal("not found")
		}
	}
}

func benchDirectory() (*Directory, []string, []int) {
	d, iccids := newTestDirectory(1000000)
	order := make([]int, 1<<16)
	for i := range order {
		order[i] = int(uint64(i) * 2654435761 % uint64(len(iccids)))
	}
	// look up copies, as ingest looks up the ICCIDs it parsed
	lookups := make([]string, len(iccids))
	for i, s := range iccids {
		lookups[i] = strings.Clone(s)
	}
	runtime.GC() // not the setup's garbage in the timed loop
	return d, lookups, order
}
