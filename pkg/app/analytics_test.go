package app

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/pkg/analytics"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// analyticsPipeline runs everything with a manual clock from 2026-03-01
// 00:00 Shanghai and fills it with two months of usage: duplicates, late
// records, overage, over-quota stops and a rollover.
func analyticsPipeline(t *testing.T) (*Pipeline, *authClient, sink.ClickHouseConfig, []string) {
	ch := testenv.ClickHouse(t)
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.Roles = AllRoles
		cfg.ClickHouse, cfg.Sink = ch, sinkConfigForTests()
		cfg.ClockStart = time.Date(2026, 2, 28, 16, 0, 0, 0, time.UTC)
		cfg.API.Batch = BatchDefaults()
	})
	c.must(c.send("PUT", "/v1/plans/metered", tokBilling, "application/json", `{"quota_bytes": 10000, "overage_fen_per_mb": 10, "monthly_fee_fen": 100}`), 200)
	c.must(c.send("PUT", "/v1/plans/capped", tokBilling, "application/json", `{"quota_bytes": 5000}`), 200)
	c.must(c.send("PUT", "/v1/accounts/acme", tokBilling, "application/json", `{"credit_limit_fen": 1000000}`), 200)
	c.must(c.send("PUT", "/v1/accounts/globex", tokBilling, "application/json", `{"credit_limit_fen": 1000000}`), 200)
	var cards []string
	for i := 0; i < 6; i++ {
		iccid := iccid(100 + i)
		cards = append(cards, iccid)
		plan, acct := []string{"metered", "capped"}[i%2], []string{"acme", "globex"}[i%3%2]
		c.must(c.send("PUT", "/v1/cards/"+iccid, tokBilling, "application/json",
			fmt.Sprintf(`{"account_id":%q,"plan_id":%q,"carrier":"cmcc","auto_stop_over_quota":%v}`, acct, plan, plan == "capped")), 200)
	}
	// a second carrier's cards: each carrier counts usage on its own only
	cucc := []string{iccid(110), iccid(111)}
	for i, card := range cucc {
		c.must(c.send("PUT", "/v1/cards/"+card, tokBilling, "application/json",
			fmt.Sprintf(`{"account_id":%q,"plan_id":"metered","carrier":"cucc"}`, []string{"acme", "globex"}[i])), 200)
	}
	push := func(token, day string, n, size int, prefix string) {
		own := cards
		if token == tokCUCC {
			own = cucc
		}
		var rows []string
		for i := 0; i < n; i++ {
			card := own[i%len(own)]
			rows = append(rows, fmt.Sprintf("%s%d,%s,,%sT%02d:00:00+08:00,%sT%02d:30:00+08:00,%d,%d", prefix, i, card, day, i%10, day, i%10, size/4, size-size/4))
		}
		r := c.send("POST", "/v1/usage?wait=true", token, "text/csv", csvOf(rows...))
		if r.code != 200 {
			t.Fatalf("push %s: %d %s", prefix, r.code, r.raw)
		}
	}
	setClock := func(now string) {
		c.must(c.send("PUT", "/v1/clock", tokAdmin, "application/json", `{"now":"`+now+`"}`), 200)
	}
	setClock("2026-03-05T23:00:00+08:00")
	push(tokCMCC, "2026-03-05", 60, 700, "a")
	push(tokCUCC, "2026-03-05", 30, 300, "b")
	setClock("2026-03-20T23:00:00+08:00")
	push(tokCMCC, "2026-03-20", 60, 900, "c")
	push(tokCMCC, "2026-03-20", 30, 900, "c") // re-sent in another batch: counted once
	setClock("2026-04-02T12:00:00+08:00")
	push(tokCMCC, "2026-03-31", 12, 500, "late") // late: March, a closed cycle
	push(tokCMCC, "2026-04-02", 24, 800, "d")
	return p, c, ch, cards
}

// waitSinkDrained waits until the sink has written everything: every
// unit's position at the last message of its subjects, and the streams
// no longer growing (the projector publishes accepted usage and events
// after it folds).
func waitSinkDrained(t *testing.T, p *Pipeline) {
	last := map[string]uint64{}
	stable := 0
	testenv.Eventually(t, 30*time.Second, func() error {
		behind, err := p.Sink.Behind(context.Background())
		if err != nil {
			return err
		}
		if len(behind) > 0 {
			stable = 0
			return fmt.Errorf("sink behind: %v", behind)
		}
		for _, stream := range []string{broker.StreamAccepted, broker.StreamEvents} {
			st, err := p.JS.Stream(context.Background(), stream)
			if err != nil {
				return err
			}
			if seq := st.CachedInfo().State.LastSeq; last[stream] != seq {
				last[stream], stable = seq, 0
			}
		}
		if stable++; stable < 8 { // 200 ms without a new message
			return errors.New("the streams may still grow")
		}
		return nil
	})
}

var sh = func() *time.Location { l, _ := time.LoadLocation("Asia/Shanghai"); return l }()

// answers runs every shipped query and a few table totals, as text.
func answers(t *testing.T, conn driver.Conn) map[string]string {
	march, april, may := time.Date(2026, 3, 1, 0, 0, 0, 0, sh), time.Date(2026, 4, 1, 0, 0, 0, 0, sh), time.Date(2026, 5, 1, 0, 0, 0, 0, sh)
	params := map[string][]any{
		"usage_per_day_per_account":          {march, april},
		"top_cards_this_cycle":               {march},
		"cards_above_80pct":                  {march},
		"stops_per_reason_per_week":          {march, may},
		"overage_revenue_per_plan_per_month": {march, may},
		"carrier_lateness":                   {march, may},
	}
	out := map[string]string{}
	for _, name := range analytics.Names() {
		args, ok := params[name]
		if !ok {
			t.Fatalf("no parameters for query %s", name)
		}
		rows, err := analytics.Run(context.Background(), conn, name, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = dump(t, rows)
	}
	for _, q := range []string{
		"SELECT count(), sum(bytes_up + bytes_down) FROM usage_records",
		"SELECT count(), sum(usage_bytes) FROM card_events",
		"SELECT sum(records), sum(bytes_up + bytes_down) FROM usage_daily_card",
		"SELECT sum(records), sum(bytes) FROM usage_cycle_card",
		"SELECT count(), sum(amount_fen) FROM charges",
	} {
		rows, err := conn.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		out[q] = dump(t, rows)
	}
	return out
}

// dump renders rows as text, whatever their columns.
func dump(t *testing.T, rows driver.Rows) string {
	defer rows.Close()
	var b strings.Builder
	types := rows.ColumnTypes()
	for rows.Next() {
		vals := make([]any, len(types))
		for i, ct := range types {
			vals[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(vals...); err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			fmt.Fprint(&b, reflect.ValueOf(v).Elem().Interface(), " ")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ClickHouse agrees with the card state: per card and cycle, the rollups
// equal what the projector counted, duplicates and late records included.
func TestRollupsEqualProjectorTotals(t *testing.T) {
	p, c, ch, cards := analyticsPipeline(t)
	waitSinkDrained(t, p)
	conn := testenv.ClickHouseConn(t, ch)
	cycleUsage := func(iccid string, start time.Time) uint64 {
		var n uint64
		if err := conn.QueryRow(context.Background(), "SELECT sum(bytes) FROM usage_cycle_card WHERE iccid = ? AND cycle_start = ?", iccid, start).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, card := range cards {
		// the current cycle (April) as the projector has it
		got := c.must(c.send("GET", "/v1/cards/"+card, tokRead, "", ""), 200)
		now := uint64(got.body["cycle"].(map[string]any)["usage_bytes"].(float64))
		if ch := cycleUsage(card, time.Date(2026, 4, 1, 0, 0, 0, 0, sh)); ch != now {
			t.Errorf("card %s April: ClickHouse %d, projector %d", card, ch, now)
		}
		// March: what the projector closed the cycle with, plus the late
		// records it counted there afterwards
		var closed, adjusted uint64
		hist := c.must(c.send("GET", "/v1/cards/"+card+"/events", tokRead, "", ""), 200)
		for _, e := range hist.body["events"].([]any) {
			e := e.(map[string]any)
			d := e["data"].(map[string]any)
			switch e["type"] {
			case "cardmeter.card.cycle_closed.v1":
				if d["cycle"].(map[string]any)["start"] == "2026-02-28T16:00:00Z" {
					closed = uint64(d["usage_bytes"].(float64))
				}
			case "cardmeter.usage.adjusted.v1":
				adjusted += uint64(d["record_bytes"].(float64))
			}
		}
		if closed == 0 || adjusted == 0 {
			t.Fatalf("card %s: the scenario did not close March (%d) or adjust it (%d)", card, closed, adjusted)
		}
		if ch := cycleUsage(card, time.Date(2026, 3, 1, 0, 0, 0, 0, sh)); ch != closed+adjusted {
			t.Errorf("card %s March: ClickHouse %d, projector %d + %d late", card, ch, closed, adjusted)
		}
	}
}

// Dropping the tables and rebuilding them from the log gives the same
// answers to every query, while the pipeline keeps running.
func TestRebuildGivesIdenticalAnswers(t *testing.T) {
	p, _, ch, _ := analyticsPipeline(t)
	waitSinkDrained(t, p)
	live := answers(t, testenv.ClickHouseConn(t, ch))
	if !strings.Contains(live["top_cards_this_cycle"], "\n") || !strings.Contains(live["overage_revenue_per_plan_per_month"], "\n") {
		t.Fatalf("the scenario gives the queries nothing to answer: %v", live)
	}

	// into a new database
	fresh := testenv.ClickHouse(t)
	var last uint64
	stats, err := sink.Rebuild(context.Background(), p.JS, fresh, p.cfg.Partitions, 0, func(done, total uint64) { last = done }, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if stats.UsageRows == 0 || stats.EventRows == 0 || last != uint64(stats.Messages) {
		t.Fatalf("rebuild: %+v, progress ended at %d", stats, last)
	}
	rebuilt := answers(t, testenv.ClickHouseConn(t, fresh))
	for k, v := range live {
		if rebuilt[k] != v {
			t.Errorf("%s:\nlive\n%s\nrebuilt\n%s", k, v, rebuilt[k])
		}
	}
	// and the live database dropped and rebuilt in place
	conn := testenv.ClickHouseConn(t, ch)
	if err := conn.Exec(context.Background(), "DROP DATABASE "+ch.Database); err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Rebuild(context.Background(), p.JS, ch, p.cfg.Partitions, 1000, nil, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	again := answers(t, testenv.ClickHouseConn(t, ch))
	for k, v := range live {
		if again[k] != v {
			t.Errorf("after drop and rebuild, %s:\nlive\n%s\nrebuilt\n%s", k, v, again[k])
		}
	}
}
