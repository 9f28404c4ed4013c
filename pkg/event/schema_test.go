package event

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

func iccid(n int) string {
	p := fmt.Sprintf("898600%013d", n)
	return p + string(cdr.LuhnDigit(p))
}

// scenario folds a story that emits every event type the fold can emit
// today, and returns the encoded events.
func scenario(t *testing.T) [][]byte {
	p := card.NewPartition()
	var out []card.Emitted
	at := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC).Unix()
	apply := func(in card.Input) {
		var err error
		if out, err = p.Apply(&in, out); err != nil {
			t.Fatal(err)
		}
	}
	apply(card.Input{Type: card.TypeClockTicked, At: at})
	apply(card.Input{Type: card.TypePlanChanged, ID: "p", At: at, Plan: &card.PlanChanged{PlanID: "small", QuotaBytes: 1000}})
	apply(card.Input{Type: card.TypeCardProvisioned, ID: "c1", At: at, Card: &card.CardProvisioned{ICCID: iccid(1), AccountID: "acme", PlanID: "small", AutoStopOverQuota: true}})
	apply(card.Input{Type: card.TypeCardProvisioned, ID: "c2", At: at, Card: &card.CardProvisioned{ICCID: iccid(2), AccountID: "acme", PlanID: "nope"}})
	h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: at}
	recs := []cdr.Record{
		{RecordID: "r1", ICCID: iccid(1), Start: at - 60, End: at, BytesDown: 2000},
		{RecordID: "r1", ICCID: iccid(1), Start: at - 60, End: at, BytesDown: 1},
		{RecordID: "old", ICCID: iccid(1), Start: at - 20*86400, End: at, BytesDown: 5},
	}
	_, out = p.ApplyUsage(&h, recs, nil, out)
	apply(card.Input{Type: card.TypeClockTicked, At: at + 40*86400})
	var enc [][]byte
	for i := range out {
		env := FromEmitted(&out[i], fmt.Sprintf("0-%d-0", i+1))
		b, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		enc = append(enc, b)
	}
	return enc
}

// Every event the fold emits validates against the schema of its type.
func TestEmittedEventsMatchTheirSchemas(t *testing.T) {
	seen := map[string]bool{}
	for _, b := range scenario(t) {
		if err := Validate(b); err != nil {
			t.Errorf("%s\n%v", b, err)
		}
		var head struct{ Type string }
		_ = json.Unmarshal(b, &head)
		seen[head.Type] = true
	}
	types, err := Types()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(types)
	// stop_cleared needs two stop reasons at once, which come with the
	// lifecycle rules; every other type must have been seen here.
	for _, typ := range types {
		if !seen[typ] && typ != "cardmeter.card.stop_cleared.v1" {
			t.Errorf("no event of type %s was emitted by the scenario", typ)
		}
	}
}

// The schemas are not vacuous: a broken event fails.
func TestSchemaRejectsBrokenEvents(t *testing.T) {
	good := scenario(t)[0]
	for name, b := range map[string]string{
		"unknown type":   `{"type":"cardmeter.card.teleported.v1"}`,
		"missing fields": `{"specversion":"1.0","type":"cardmeter.card.stopped.v1"}`,
		"bad iccid":      string(replace(good, `"iccid":"`+iccid(1)+`"`, `"iccid":"12"`)),
		"extra field":    string(replace(good, `"specversion":"1.0"`, `"specversion":"1.0","colour":"red"`)),
	} {
		if err := Validate([]byte(b)); err == nil {
			t.Errorf("%s: validated: %s", name, b)
		}
	}
}

func replace(b []byte, old, new string) []byte {
	s := string(b)
	i := strings.Index(s, old)
	if i < 0 {
		panic("replace: " + old + " not in " + s)
	}
	return []byte(s[:i] + new + s[i+len(old):])
}
