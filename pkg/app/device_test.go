package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/cli"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// A card moved to a phone, through the API with the manual clock: its
// plan binds each card to the first device its usage shows and stops it
// in another; the record from the phone stops it, and the card shows why
// (device_mismatch, the record as the cause, the devices); the event is
// in ClickHouse with its devices; an operator's rebind to the new device
// puts it back in service.
func TestACardMovedToAPhoneIsStopped(t *testing.T) {
	ch := testenv.ClickHouse(t)
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.Roles = []string{RoleAPI, RoleProjector, RoleClock, RoleSink}
		cfg.ClickHouse, cfg.Sink = ch, sinkConfigForTests()
	})
	card := iccid(21)
	c.must(c.send("PUT", "/v1/plans/bound", tokBilling, "application/json", `{"quota_bytes": 100000000, "bind_imei": "first_seen", "stop_on_imei_change": true}`), 200)
	c.must(c.send("PUT", "/v1/plans/bad", tokBilling, "application/json", `{"quota_bytes": 1, "bind_imei": "always"}`), 400)
	c.must(c.send("PUT", "/v1/cards/"+card, tokBilling, "application/json", `{"account_id":"a","plan_id":"bound","carrier":"cmcc","imei":"490154203237519"}`), 400) // a wrong check digit
	c.must(c.send("PUT", "/v1/cards/"+card, tokBilling, "application/json", `{"account_id":"a","plan_id":"bound","carrier":"cmcc"}`), 200)
	record := func(id, start, imei string) string {
		return fmt.Sprintf(`{"record_id":%q,"iccid":%q,"start_time":%q,"end_time":%q,"bytes_up":0,"bytes_down":1000,"imei":%q}`,
			id, card, start, start, imei)
	}
	push := func(body string) uint64 {
		r := c.send("POST", "/v1/usage?wait=true", tokCMCC, "application/x-ndjson", body)
		if r.code != 200 {
			t.Fatalf("usage: %d %s", r.code, r.raw)
		}
		return uint64(r.body["position"].(float64))
	}
	// the tracker, then no IMEI, then the same tracker by its IMEISV: in service
	push(record("r1", "2026-03-10T08:00:00Z", "490154203237518") + "\n" + record("r2", "2026-03-10T09:00:00Z", "") + "\n" +
		record("r3", "2026-03-10T10:00:00Z", "4901542032375199"))
	var v api.CardResponse
	r := c.must(c.send("GET", "/v1/cards/"+card, tokRead, "", ""), 200)
	if err := json.Unmarshal(r.raw, &v); err != nil {
		t.Fatal(err)
	}
	if v.Status != "in_service" || v.Device.IMEI != "49015420323751" || !v.Device.BindFirstSeen || !v.Device.StopOnIMEIChange {
		t.Fatalf("bound to its first device: %s", r.raw)
	}
	// the card in a phone
	pos := push(record("r4", "2026-03-10T11:00:00Z", "356938035643809"))
	r = c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%d", card, pos), tokRead, "", ""), 200)
	if err := json.Unmarshal(r.raw, &v); err != nil {
		t.Fatal(err)
	}
	if v.Status != "stopped" || fmt.Sprint(v.StopReasons) != "[device_mismatch]" || v.Device.IMEI != "49015420323751" || v.Device.LastIMEI != "35693803564380" {
		t.Fatalf("in a phone: %s", r.raw)
	}
	var hist struct {
		Events []struct {
			Type string `json:"type"`
			Data struct {
				Cause, Reason, IMEI, BoundIMEI string
			} `json:"data"`
		} `json:"events"`
	}
	r = c.must(c.send("GET", "/v1/cards/"+card+"/events", tokRead, "", ""), 200)
	if err := json.Unmarshal(r.raw, &hist); err != nil {
		t.Fatal(err)
	}
	var told, stopped bool
	for _, e := range hist.Events {
		switch e.Type {
		case "cardmeter.card.imei_changed.v1":
			told = e.Data.Cause == "record:cmcc/r4"
		case "cardmeter.card.stopped.v1":
			stopped = e.Data.Reason == "device_mismatch" && e.Data.Cause == "record:cmcc/r4"
		}
	}
	if !told || !stopped {
		t.Fatalf("why it stopped: %s", r.raw)
	}
	// the event in ClickHouse, with its devices
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 30*time.Second, func() error {
		var imei, bound, cause string
		err := conn.QueryRow(context.Background(), "SELECT imei, bound_imei, cause FROM card_events WHERE type = 'cardmeter.card.imei_changed.v1' AND iccid = ?", card).
			Scan(&imei, &bound, &cause)
		if err != nil || imei != "35693803564380" || bound != "49015420323751" || cause != "record:cmcc/r4" {
			return fmt.Errorf("imei_changed in ClickHouse: %q %q %q %v", imei, bound, cause, err)
		}
		return nil
	})
	// an operator's rebind to the phone: a bad IMEI is 400, then in service
	c.must(c.send("POST", "/v1/cards/"+card+"/rebind", tokAdmin, "application/json", `{"imei":"35693803564380","operator":"ops"}`), 400)
	// (from the shell: `cardmeter card rebind`)
	t.Setenv("CARDMETER_TOKEN", tokAdmin)
	var out, errb bytes.Buffer
	code := cli.Card([]string{"rebind", card, "--imei", "356938035643809", "--operator", "ops", "--note", "the customer's phone now", "--url", p.URL}, &out, &errb)
	if code != cli.ExitOK || !strings.Contains(out.String(), "status   in_service") || !strings.Contains(out.String(), "device   bound to 35693803564380") {
		t.Fatalf("rebind: exit %d\n%s%s", code, out.String(), errb.String())
	}
}
