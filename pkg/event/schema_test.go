package event

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
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

// scenario folds a story that emits every event type there is, and
// returns the encoded events.
func scenario(t *testing.T) [][]byte {
	p := card.NewPartition()
	var out []card.Emitted
	at := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC).Unix()
	day := int64(86400)
	n := 0
	apply := func(in card.Input) {
		n++
		in.ID, in.At = fmt.Sprint("e", n), at
		var err error
		if out, err = p.Apply(&in, out); err != nil {
			t.Fatal(err)
		}
	}
	tick := func(d int64) { at += d * day; apply(card.Input{Type: card.TypeClockTicked}) }
	use := func(id string, c int, bytes uint64, start int64) {
		h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: at}
		_, out = p.ApplyUsage(&h, []cdr.Record{{RecordID: id, ICCID: iccid(c), Start: start, End: start + 60, BytesDown: bytes}}, nil, nil, out)
	}
	tick(0)
	apply(card.Input{Type: card.TypePlanChanged, Plan: &card.PlanChanged{PlanID: "small", QuotaBytes: 1000, MonthlyFeeFen: 100, OverageFenPerMB: 5}})
	apply(card.Input{Type: card.TypeAccountChanged, Account: &card.AccountChanged{AccountID: "acme", LowBalanceFen: 50, CreditLimitFen: 10}})
	apply(card.Input{Type: card.TypePaymentReceived, Payment: &card.Payment{AccountID: "acme", PaymentID: "p1", AmountFen: 1000}})
	apply(card.Input{Type: card.TypeCardProvisioned, Card: &card.CardProvisioned{ICCID: iccid(1), AccountID: "acme", PlanID: "small", AutoStopOverQuota: true, ValidUntil: at + 20*day}})
	apply(card.Input{Type: card.TypeCardProvisioned, Card: &card.CardProvisioned{ICCID: iccid(2), AccountID: "acme", PlanID: "nope"}})
	apply(card.Input{Type: card.TypePlanChanged, Plan: &card.PlanChanged{PlanID: "free", QuotaBytes: 1 << 30}})
	apply(card.Input{Type: card.TypeCardProvisioned, Card: &card.CardProvisioned{ICCID: iccid(3), AccountID: "globex", PlanID: "free"}})
	apply(card.Input{Type: card.TypeStopRequested, Command: &card.ManualCommand{ICCID: iccid(3), Operator: "ops"}})
	apply(card.Input{Type: card.TypeResumeRequested, Command: &card.ManualCommand{ICCID: iccid(3), Operator: "ops"}})
	apply(card.Input{Type: card.TypeStopRequested, Command: &card.ManualCommand{ICCID: iccid(1), Operator: "ops", Note: "parked"}})
	use("r1", 1, 2000, at-60)
	use("r1", 1, 1, at-60)
	use("old", 1, 5, at-20*day)
	apply(card.Input{Type: card.TypeResumeRequested, Command: &card.ManualCommand{ICCID: iccid(1), Operator: "ops"}})
	tick(20) // expiry warnings, rollover (stop_cleared: manual stays), expiry
	apply(card.Input{Type: card.TypeCardRenewed, Renewal: &card.Renewal{ICCID: iccid(1), RenewalID: "rn", Months: 1}})
	apply(card.Input{Type: card.TypeChargeRequested, Charge: &card.Charge{AccountID: "acme", ChargeID: "c1", AmountFen: 2000}})
	apply(card.Input{Type: card.TypePaymentReceived, Payment: &card.Payment{AccountID: "acme", PaymentID: "p2", AmountFen: 5000}})
	apply(card.Input{Type: card.TypeResumeRequested, Command: &card.ManualCommand{ICCID: iccid(1), Operator: "ops"}})
	apply(card.Input{Type: card.TypeActuationReported, Actuation: &card.ActuationReport{ICCID: iccid(3), Action: "stop", Carrier: "cmcc", OK: true, Cause: "event:0-9-0"}})
	apply(card.Input{Type: card.TypeActuationReported, Actuation: &card.ActuationReport{ICCID: iccid(3), Action: "resume", Carrier: "cmcc", Detail: "503 from the carrier", Cause: "event:0-10-0"}})
	apply(card.Input{Type: card.TypeDriftReported, Drift: &card.DriftReport{Carrier: "cmcc", Counts: map[string]int{"active_at_carrier": 1, "unknown_to_cardmeter": 2},
		Cards: []string{iccid(1), "89860000000000000999", "89860000000000000998"}, Sent: 1}})
	apply(card.Input{Type: card.TypeResyncRequested, Resync: &card.ResyncRequest{ICCID: iccid(3), Reason: "reconcile: inactive_at_carrier", By: "ops"}})
	apply(card.Input{Type: card.TypeWebhookDisabled, Webhook: &card.WebhookNotice{WebhookID: "crm", Reason: "every attempt failed since 2026-01-07T00:00:00Z"}})
	// a card bound to its device, used in another: told, stopped; rebound
	apply(card.Input{Type: card.TypeCardProvisioned, Card: &card.CardProvisioned{ICCID: iccid(4), AccountID: "globex", PlanID: "free",
		IMEI: "490154203237518", StopOnIMEIChange: true}})
	h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: at}
	_, out = p.ApplyUsage(&h, []cdr.Record{{RecordID: "in-a-phone", ICCID: iccid(4), Start: at, End: at + 60, BytesDown: 10, IMEI: "356938035643809"}}, nil, nil, out)
	apply(card.Input{Type: card.TypeRebindRequested, Rebind: &card.Rebind{ICCID: iccid(4), IMEI: "356938035643809", Operator: "ops", Note: "the device was replaced"}})
	// a week of quiet days, then a day far above them
	apply(card.Input{Type: card.TypeCardProvisioned, Card: &card.CardProvisioned{ICCID: iccid(5), AccountID: "globex", PlanID: "free"}})
	for d := int64(0); d < 7; d++ {
		use(fmt.Sprint("day", d), 5, 1000, at+d*day)
	}
	use("spike", 5, 60<<20, at+7*day)
	tick(200) // expiry again, keep-number fees, cancellation
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
	for _, typ := range types {
		if !seen[typ] {
			t.Errorf("no event of type %s was emitted by the scenario", typ)
		}
	}
}

// The schemas are not vacuous: a broken event fails.
func TestSchemaRejectsBrokenEvents(t *testing.T) {
	var good []byte
	for _, b := range scenario(t) {
		if strings.Contains(string(b), `"type":"cardmeter.card.stopped.v1"`) {
			good = b
			break
		}
	}
	for name, b := range map[string]string{
		"unknown type":   `{"type":"cardmeter.card.teleported.v1"}`,
		"missing fields": `{"specversion":"1.0","type":"cardmeter.card.stopped.v1"}`,
		"bad iccid":      string(replace(good, `"iccid":"89`, `"iccid":"12`)),
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

var update = flag.Bool("update", false, "write schemas/events/CATALOGUE.md from the scenario")

// schemas/events/CATALOGUE.md lists every event type with its schema's
// description and an example the fold emitted (the scenario's first of
// the type); it is made from them, so it cannot drift: `go test
// ./pkg/event -run TestCatalogue -update` writes it again.
func TestCatalogue(t *testing.T) {
	first := map[string][]byte{}
	for _, b := range scenario(t) {
		var head struct{ Type string }
		_ = json.Unmarshal(b, &head)
		if _, ok := first[head.Type]; !ok {
			first[head.Type] = b
		}
	}
	types, err := Types()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(types)
	var doc strings.Builder
	doc.WriteString("# The event catalogue\n\nEvery event cardmeter emits, with its JSON Schema's description and an\n" +
		"example the fold emitted (made by `go test ./pkg/event -run TestCatalogue\n-update` from `pkg/event`'s scenario; do not edit). Each is published on\n" +
		"`cardmeter.events.<kind>.<subject>` and delivered to the webhooks that take\nits type. The envelope is `envelope.json`.\n")
	for _, typ := range types {
		name := strings.TrimPrefix(typ, "cardmeter.")
		raw, err := os.ReadFile(filepath.Join("..", "..", "schemas", "events", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		var sch struct{ Description string }
		if err := json.Unmarshal(raw, &sch); err != nil {
			t.Fatal(err)
		}
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, first[typ], "", "  "); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&doc, "\n## `%s`\n\n%s\n\n```json\n%s\n```\n", typ, sch.Description, pretty.String())
	}
	path := filepath.Join("..", "..", "schemas", "events", "CATALOGUE.md")
	if *update {
		if err := os.WriteFile(path, []byte(doc.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(path)
	if err != nil || string(have) != doc.String() {
		t.Fatalf("schemas/events/CATALOGUE.md is not what the schemas and the scenario make (%v): run go test ./pkg/event -run TestCatalogue -update", err)
	}
}
