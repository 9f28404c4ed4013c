package app

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/event"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// post sends JSON and returns the status and the decoded answer.
func (c *client) post(path string, v any) (int, map[string]any) {
	c.t.Helper()
	b, _ := json.Marshal(v)
	var out map[string]any
	code := c.do("POST", path, "application/json", b, &out)
	return code, out
}

func (c *client) setClock(now string) uint64 {
	c.t.Helper()
	out := c.putJSON("/v1/clock", map[string]string{"now": now})
	return uint64(out["position"].(float64))
}

func pos(m map[string]any) uint64 { return uint64(m["position"].(float64)) }

// A card through its whole life, through the API with the manual clock:
// over quota, rollover, arrears, payment, expiry, renewal, expiry again
// and cancellation; the right events at each step, refusals typed, and
// the history says why.
func TestCardLifecycleThroughTheAPI(t *testing.T) {
	ch := testenv.ClickHouse(t)
	p, err := Start(context.Background(), Config{DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0", Partitions: 2,
		ManualClock: true, ClockStart: time.Date(2025, 12, 31, 16, 0, 0, 0, time.UTC), ClickHouse: ch,
		Sink: sinkConfigForTests()}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 20*time.Second, p.Projector.Ready) // a write's decision is final (200) once its partition folds
	c := &client{t: t, base: p.URL}
	seen := events(t, p.JS)
	card := iccid(42)

	c.putJSON("/v1/plans/iot", map[string]any{"quota_bytes": 1_000_000, "monthly_fee_fen": 1000})
	c.putJSON("/v1/accounts/acme", map[string]any{"credit_limit_fen": 0, "low_balance_fen": 500})
	if code, out := c.post("/v1/accounts/acme/payments", map[string]any{"payment_id": "p1", "amount_fen": 2000}); code != 200 {
		t.Fatalf("payment: %d %v", code, out)
	}
	last := pos(c.putJSON("/v1/cards/"+card, map[string]any{"account_id": "acme", "plan_id": "iot", "carrier": "cmcc", "auto_stop_over_quota": true,
		"valid_until": "2026-04-01T00:00:00+08:00"}))
	if got := c.card(card, last); got.Status != "in_service" || got.Account.BalanceFen != 1000 {
		t.Fatalf("provisioned: %+v", got)
	}

	// over quota
	c.setClock("2026-01-10T12:00:00+08:00")
	nd := fmt.Sprintf(`{"record_id":"r1","iccid":"%s","start_time":"2026-01-10T10:00:00+08:00","end_time":"2026-01-10T11:00:00+08:00","bytes_up":100000,"bytes_down":1000000}`, card)
	var res struct{ Position uint64 }
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(nd), &res); code != 200 {
		t.Fatalf("usage: %d", code)
	}
	if got := c.card(card, res.Position); got.Status != "stopped" || !slices.Equal(got.StopReasons, []string{"over_quota"}) ||
		!slices.Contains(got.ActiveWarnings, "usage_100") {
		t.Fatalf("over quota: %+v", got)
	}
	// a manual stop of a card over quota is refused, typed
	var prob map[string]any
	b, _ := json.Marshal(map[string]string{"operator": "ops@acme", "note": "parking"})
	if code := c.do("POST", "/v1/cards/"+card+"/stop", "application/json", b, &prob); code != 409 || prob["type"] != "cardmeter:refused/over-quota" {
		t.Fatalf("manual stop over quota: %d %v", code, prob)
	}
	if code := c.do("POST", "/v1/cards/"+card+"/stop", "application/json", []byte(`{}`), &prob); code != 400 || prob["field"] != "operator" {
		t.Fatalf("a stop without operator: %d %v", code, prob)
	}

	// the next cycle: the over-quota stop clears, the monthly fee is charged
	got := c.card(card, c.setClock("2026-02-01T00:00:00+08:00"))
	if got.Status != "in_service" || got.Cycle.UsageBytes != 0 || got.Account.BalanceFen != 0 {
		t.Fatalf("rollover: %+v", got)
	}

	// arrears: a charge from billing takes the balance below zero
	code, out := c.post("/v1/accounts/acme/charges", map[string]any{"charge_id": "sms-jan", "amount_fen": 300, "reason": "sms"})
	if code != 200 {
		t.Fatalf("charge: %d %v", code, out)
	}
	if got := c.card(card, pos(out)); got.Status != "stopped" || !slices.Equal(got.StopReasons, []string{"arrears"}) || !got.Account.InArrears {
		t.Fatalf("arrears: %+v", got)
	}
	if code := c.do("POST", "/v1/cards/"+card+"/resume", "application/json", b, &prob); code != 409 || prob["type"] != "cardmeter:refused/in-arrears" {
		t.Fatalf("manual resume in arrears: %d %v", code, prob)
	}
	// a payment lifts the balance: resumable by hand (the account did not opt in to auto resume)
	_, out = c.post("/v1/accounts/acme/payments", map[string]any{"payment_id": "p2", "amount_fen": 5000})
	code2, again := c.post("/v1/accounts/acme/payments", map[string]any{"payment_id": "p2", "amount_fen": 5000})
	if code2 != 200 || pos(again) != pos(out) {
		t.Fatalf("a repeated payment got another answer: %v vs %v", again, out)
	}
	if got := c.card(card, pos(out)); got.Status != "stopped" || got.Account.InArrears || got.Account.BalanceFen != 4700 {
		t.Fatalf("after payment: %+v", got)
	}
	var resumed struct {
		Status      string
		LastCommand struct{ Applied bool } `json:"last_command"`
	}
	if code := c.do("POST", "/v1/cards/"+card+"/resume", "application/json", b, &resumed); code != 200 || resumed.Status != "in_service" || !resumed.LastCommand.Applied {
		t.Fatalf("manual resume after payment: %d %+v", code, resumed)
	}

	// expiry at the validity end; the keep-number fee instead of the monthly fee
	c.setClock("2026-03-01T00:00:00+08:00")
	got = c.card(card, c.setClock("2026-04-01T00:00:00+08:00"))
	if got.Status != "stopped" || !slices.Equal(got.StopReasons, []string{"expiry"}) || got.Account.BalanceFen != 4700-1000-500 {
		t.Fatalf("expiry: %+v", got)
	}
	// renewal within three months resumes it
	_, out = c.post("/v1/cards/"+card+"/renewals", map[string]any{"renewal_id": "rn-1", "months": 1})
	if got := c.card(card, pos(out)); got.Status != "in_service" || got.ValidUntil != "2026-04-30T16:00:00Z" {
		t.Fatalf("renewal: %+v", got)
	}
	// expires again, is not renewed, and three months later is cancelled
	c.setClock("2026-05-01T00:00:00+08:00")
	got = c.card(card, c.setClock("2026-08-01T00:00:00+08:00"))
	if got.Status != "cancelled" {
		t.Fatalf("cancellation: %+v", got)
	}
	// the renewal is refused, and the answer says so (it once answered 200)
	if code := c.do("POST", "/v1/cards/"+card+"/renewals", "application/json", []byte(`{"renewal_id": "rn-2", "months": 12}`), &prob); code != 409 || prob["type"] != "cardmeter:refused/cancelled" {
		t.Fatalf("renewal of a cancelled card: %d %v", code, prob)
	}
	if got := c.card(card, 0); got.Status != "cancelled" {
		t.Fatalf("a cancelled card was renewed: %+v", got)
	}
	if code := c.do("POST", "/v1/cards/"+card+"/resume", "application/json", b, &prob); code != 409 || prob["type"] != "cardmeter:refused/cancelled" {
		t.Fatalf("resume of a cancelled card: %d %v", code, prob)
	}

	// the history answers why, step by step
	var hist struct{ Events []event.Envelope }
	if code := c.do("GET", "/v1/cards/"+card+"/events", "", nil, &hist); code != 200 {
		t.Fatalf("history: %d", code)
	}
	var steps []string
	for _, e := range hist.Events {
		switch e.Type {
		case "cardmeter.card.stopped.v1", "cardmeter.card.resumed.v1", "cardmeter.card.stop_cleared.v1":
			steps = append(steps, e.Type[15:len(e.Type)-3]+":"+e.Data.Reason)
		case "cardmeter.card.cancelled.v1", "cardmeter.card.renewed.v1", "cardmeter.card.command_refused.v1", "cardmeter.input.refused.v1":
			steps = append(steps, e.Type[10:len(e.Type)-3]+e.Data.Code)
		}
		if e.Data.Cause == "" {
			t.Errorf("event %s without cause", e.ID)
		}
	}
	want := []string{"stopped:over_quota", "card.command_refusedover-quota", "resumed:over_quota", "stopped:arrears",
		"card.command_refusedin-arrears", "resumed:arrears", "stopped:expiry", "card.renewed", "resumed:expiry",
		"stopped:expiry", "card.cancelled", "input.refusedcancelled", "card.command_refusedcancelled"}
	if !slices.Equal(steps, want) {
		t.Fatalf("history:\n got %v\nwant %v", steps, want)
	}
	for _, e := range hist.Events {
		if e.Type == "cardmeter.card.stopped.v1" && e.Data.Reason == "arrears" && e.Data.Cause != "event:charge-acme-sms-jan" {
			t.Errorf("the arrears stop names cause %q, want the charge", e.Data.Cause)
		}
	}
	// every event on the stream matches its schema (events() validates)
	if n := len(seen()); n < len(hist.Events) {
		t.Fatalf("%d events on the stream, %d in the history", n, len(hist.Events))
	}
	// the sink took every kind of event into ClickHouse
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 20*time.Second, func() error {
		var n uint64
		if err := conn.QueryRow(context.Background(), "SELECT count() FROM card_events WHERE iccid = ?", card).Scan(&n); err != nil {
			return err
		}
		var charged int64
		if err := conn.QueryRow(context.Background(), "SELECT sum(amount_fen) FROM card_events WHERE type = 'cardmeter.account.charged.v1' AND account_id = 'acme'").Scan(&charged); err != nil {
			return err
		}
		// events with the card's ICCID: its own, plus charges of its fees
		if int(n) < len(hist.Events) || charged != 1000*3+300+500*4 {
			return fmt.Errorf("ClickHouse has %d events of the card (history %d), %d fen charged", n, len(hist.Events), charged)
		}
		return nil
	})
	var acct map[string]any
	if code := c.do("GET", "/v1/accounts/acme", "", nil, &acct); code != 200 || acct["cards"].(map[string]any)["cancelled"].(float64) != 1 {
		t.Fatalf("account: %d %v", code, acct)
	}
	var list struct {
		Cards []struct{ ICCID string }
	}
	if code := c.do("GET", "/v1/cards?status=cancelled", "", nil, &list); code != 200 || len(list.Cards) != 1 || list.Cards[0].ICCID != card {
		t.Fatalf("list of cancelled cards: %d %+v", code, list)
	}
	if code := c.do("GET", "/v1/cards?status=in_service", "", nil, &list); code != 200 || len(list.Cards) != 0 {
		t.Fatalf("list of cards in service: %d %+v", code, list)
	}
}
