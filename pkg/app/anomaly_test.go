package app

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// A spike day on one card of a quiet fleet, through the API with the
// manual clock: a week of quiet days on three cards of a plan that stops
// on anomalies, then one card uses 40 times its usual in a day. That card
// alone stops for "anomaly" with the crossing record as the cause, the
// event says the day, its bytes and the week's median, ClickHouse has it,
// and an operator's resume puts the card back.
func TestASpikeDayOnAQuietFleet(t *testing.T) {
	ch := testenv.ClickHouse(t)
	_, c := securedPipeline(t, func(cfg *Config) {
		cfg.Roles = []string{RoleAPI, RoleProjector, RoleClock, RoleSink}
		cfg.ClickHouse, cfg.Sink = ch, sinkConfigForTests()
	})
	c.must(c.send("PUT", "/v1/plans/watched", tokBilling, "application/json", `{"quota_bytes": 10000000000, "stop_on_anomaly": true}`), 200)
	if r := c.must(c.send("GET", "/v1/plans/watched", tokRead, "", ""), 200); r.body["anomaly_min_bytes"] != float64(50<<20) || r.body["anomaly_factor"] != 5.0 {
		t.Fatalf("the plan's defaults: %s", r.raw)
	}
	c.must(c.send("PUT", "/v1/plans/bad", tokBilling, "application/json", `{"quota_bytes": 1, "anomaly_factor": 0.5}`), 400)
	cards := []string{iccid(31), iccid(32), iccid(33)}
	for _, card := range cards {
		c.must(c.send("PUT", "/v1/cards/"+card, tokBilling, "application/json", `{"account_id":"a","plan_id":"watched","carrier":"cmcc"}`), 200)
	}
	record := func(id, card, start string, bytes int) string {
		return fmt.Sprintf(`{"record_id":%q,"iccid":%q,"start_time":%q,"end_time":%q,"bytes_up":0,"bytes_down":%d}`, id, card, start, start, bytes)
	}
	var quiet []string
	for d := 1; d <= 8; d++ { // eight quiet days (Shanghai): 2 MB a day each
		for i, card := range cards {
			quiet = append(quiet, record(fmt.Sprintf("q%d-%d", d, i), card, fmt.Sprintf("2026-03-%02dT10:00:00+08:00", d), 2_000_000))
		}
	}
	if r := c.send("POST", "/v1/usage?wait=true", tokCMCC, "application/x-ndjson", strings.Join(quiet, "\n")); r.code != 200 {
		t.Fatalf("the quiet week: %d %s", r.code, r.raw)
	}
	// the spike: 40 MB, then 40 MB more on card 0 on the 9th
	r := c.send("POST", "/v1/usage?wait=true", tokCMCC, "application/x-ndjson",
		record("s1", cards[0], "2026-03-09T01:00:00+08:00", 40_000_000)+"\n"+record("s2", cards[0], "2026-03-09T02:00:00+08:00", 40_000_000)+"\n"+
			record("q9", cards[1], "2026-03-09T03:00:00+08:00", 2_000_000))
	if r.code != 200 {
		t.Fatalf("the spike: %d %s", r.code, r.raw)
	}
	pos := uint64(r.body["position"].(float64))
	for i, card := range cards {
		var v api.CardResponse
		raw := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%d", card, pos), tokRead, "", ""), 200).raw
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		want := "in_service []"
		if i == 0 {
			want = "stopped [anomaly]"
		}
		if got := fmt.Sprint(v.Status, " ", v.StopReasons); got != want {
			t.Fatalf("card %d: %s, want %s", i, got, want)
		}
	}
	var hist struct {
		Events []struct {
			Type string `json:"type"`
			Data struct {
				Cause, Reason, Day string
				DayBytes           uint64 `json:"day_bytes"`
				MedianBytes        uint64 `json:"median_bytes"`
			} `json:"data"`
		} `json:"events"`
	}
	raw := c.must(c.send("GET", "/v1/cards/"+cards[0]+"/events", tokRead, "", ""), 200).raw
	if err := json.Unmarshal(raw, &hist); err != nil {
		t.Fatal(err)
	}
	var told, stopped int
	for _, e := range hist.Events {
		switch {
		case e.Type == "cardmeter.card.usage_anomaly.v1" && e.Data.Day == "2026-03-09" && e.Data.DayBytes == 80_000_000 &&
			e.Data.Cause == "record:cmcc/s2" && e.Data.MedianBytes/1024 == 2_000_000/1024:
			told++
		case e.Type == "cardmeter.card.stopped.v1" && e.Data.Reason == "anomaly" && e.Data.Cause == "record:cmcc/s2":
			stopped++
		}
	}
	if told != 1 || stopped != 1 {
		t.Fatalf("the anomaly and the stop (%d, %d): %s", told, stopped, raw)
	}
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 30*time.Second, func() error {
		var day string
		var dayBytes, median uint64
		err := conn.QueryRow(context.Background(), "SELECT detail, day_bytes, median_bytes FROM card_events WHERE type = 'cardmeter.card.usage_anomaly.v1' AND iccid = ?", cards[0]).
			Scan(&day, &dayBytes, &median)
		if err != nil || day != "2026-03-09" || dayBytes != 80_000_000 || median == 0 {
			return fmt.Errorf("the anomaly in ClickHouse: %q %d %d %v", day, dayBytes, median, err)
		}
		return nil
	})
	r = c.must(c.send("POST", "/v1/cards/"+cards[0]+"/resume", tokAdmin, "application/json", `{"operator":"ops","note":"a firmware update, expected"}`), 200)
	if r.body["status"] != "in_service" {
		t.Fatalf("resumed: %s", r.raw)
	}
}
