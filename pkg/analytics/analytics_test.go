package analytics_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/pkg/analytics"
	"github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

var sh, _ = time.LoadLocation("Asia/Shanghai")

func at(s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", s, sh)
	if err != nil {
		panic(err)
	}
	return t
}

// known fills a fresh database with a small, hand-checked history.
func known(t *testing.T) driver.Conn {
	ch := testenv.ClickHouse(t)
	conn := testenv.ClickHouseConn(t, ch)
	ctx := context.Background()
	if err := sink.Migrate(ctx, conn, ch); err != nil {
		t.Fatal(err)
	}
	march, feb := at("2026-03-01 00:00"), at("2026-02-01 00:00")
	type u struct {
		seq                  uint64
		iccid, account, plan string
		carrier              string
		start                string
		up, down             uint64
		delay                int64
		cycle                time.Time
		late                 uint8
	}
	usage := []u{
		{1, "c1", "A1", "P1", "cmcc", "2026-03-01 10:00", 100, 900, 60, march, 0},
		{2, "c1", "A1", "P1", "cmcc", "2026-03-02 10:00", 0, 2000, 120, march, 0},
		{3, "c2", "A1", "P2", "cucc", "2026-03-01 23:30", 0, 500, 3600, march, 0},
		{4, "c3", "A2", "P1", "cmcc", "2026-03-01 10:00", 0, 4000, 60, march, 0},
		{5, "c3", "A2", "P1", "cmcc", "2026-02-28 23:00", 100, 200, 86400, feb, 1},
	}
	b, err := conn.PrepareBatch(ctx, `INSERT INTO usage_records (partition, src_seq, idx, carrier, record_id, iccid, account_id, plan_id,
		start_time, end_time, bytes_up, bytes_down, cycle_start, late, received_at, arrival_delay_s)`)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range usage {
		start := at(r.start)
		end := start.Add(30 * time.Minute)
		if err := b.Append(uint16(0), r.seq, uint32(0), r.carrier, fmt.Sprint("r", r.seq), r.iccid, r.account, r.plan,
			start, end, r.up, r.down, r.cycle, r.late, end.Add(time.Duration(r.delay)*time.Second), r.delay); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	type e struct {
		seq        uint64
		typ, iccid string
		plan       string
		time       string
		reason     string
		quota      uint64
		amount     int64
		detail     string
	}
	events := []e{
		{1, "card.provisioned", "c1", "P1", "2026-03-01 00:00", "", 3000, 0, ""},
		{2, "card.provisioned", "c2", "P2", "2026-03-01 00:00", "", 10000, 0, ""},
		{3, "card.provisioned", "c3", "P1", "2026-03-01 00:00", "", 10000, 0, ""},
		{5, "card.provisioned", "c3", "P1", "2026-03-01 01:00", "", 4500, 0, ""}, // the plan changed
		{10, "card.stopped", "c1", "P1", "2026-03-02 10:00", "over_quota", 3000, 0, ""},
		{11, "card.stopped", "c3", "P1", "2026-03-03 08:00", "manual", 4500, 0, ""},
		{12, "card.stop_cleared", "c3", "P1", "2026-03-03 09:00", "manual", 4500, 0, ""},
		{13, "card.stopped", "c2", "P2", "2026-03-04 00:00", "arrears", 10000, 0, ""},
		{20, "card.resumed", "c1", "P1", "2026-04-01 00:00", "over_quota", 3000, 0, ""},
		{30, "account.charged", "c1", "P1", "2026-03-15 12:00", "", 0, 100, "overage"},
		{31, "account.charged", "c2", "P2", "2026-03-20 12:00", "", 0, 50, "overage"},
		{32, "account.charged", "c1", "P1", "2026-04-02 12:00", "", 0, 30, "overage_adjustment"},
		{33, "account.charged", "c1", "P1", "2026-03-01 00:00", "", 0, 1000, "monthly_fee"},
	}
	b, err = conn.PrepareBatch(ctx, `INSERT INTO card_events (partition, src_seq, idx, event_id, type, iccid, account_id, plan_id, time,
		reason, quota_bytes, amount_fen, detail)`)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		if err := b.Append(uint16(0), ev.seq, uint32(0), fmt.Sprintf("0-%d-0", ev.seq), "cardmeter."+ev.typ+".v1", ev.iccid, "A", ev.plan,
			at(ev.time), ev.reason, ev.quota, ev.amount, ev.detail); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	return conn
}

func rowsOf(t *testing.T, rows driver.Rows, scan func() []any) [][]any {
	t.Helper()
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		dest := scan()
		if err := rows.Scan(dest...); err != nil {
			t.Fatal(err)
		}
		vals := make([]any, len(dest))
		for i, d := range dest {
			switch d := d.(type) {
			case *time.Time:
				vals[i] = d.In(sh).Format("2006-01-02")
			case *string:
				vals[i] = *d
			case *uint64:
				vals[i] = *d
			case *int64:
				vals[i] = *d
			case *float64:
				if math.IsNaN(*d) {
					vals[i] = "NaN"
				} else {
					vals[i] = *d
				}
			}
		}
		out = append(out, vals)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func run(t *testing.T, conn driver.Conn, name string, scan func() []any, args ...any) string {
	t.Helper()
	rows, err := analytics.Run(context.Background(), conn, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(rowsOf(t, rows, scan))
}

func TestShippedQueriesOnKnownData(t *testing.T) {
	conn := known(t)
	cases := []struct {
		name string
		args []any
		scan func() []any
		want string
	}{
		{"usage_per_day_per_account", []any{at("2026-03-01 00:00"), at("2026-04-01 00:00")},
			func() []any {
				return []any{new(time.Time), new(string), new(uint64), new(uint64), new(uint64), new(uint64)}
			},
			"[[2026-03-01 A1 100 1400 1500 2] [2026-03-01 A2 0 4000 4000 1] [2026-03-02 A1 0 2000 2000 1]]"},
		{"top_cards_this_cycle", []any{at("2026-03-01 00:00")},
			func() []any { return []any{new(string), new(string), new(string), new(uint64), new(uint64)} },
			"[[c3 A2 P1 4000 1] [c1 A1 P1 3000 2] [c2 A1 P2 500 1]]"},
		{"cards_above_80pct", []any{at("2026-03-01 00:00")},
			func() []any {
				return []any{new(string), new(string), new(string), new(uint64), new(uint64), new(float64)}
			},
			"[[c1 A1 P1 3000 3000 100] [c3 A2 P1 4000 4500 88.9]]"},
		{"stops_per_reason_per_week", []any{at("2026-03-01 00:00"), at("2026-04-01 00:00")},
			func() []any { return []any{new(time.Time), new(string), new(uint64), new(uint64), new(float64)} },
			"[[2026-03-02 arrears 1 0 NaN] [2026-03-02 manual 1 1 3600] [2026-03-02 over_quota 1 1 2.556e+06]]"},
		{"overage_revenue_per_plan_per_month", []any{at("2026-03-01 00:00"), at("2026-05-01 00:00")},
			func() []any { return []any{new(time.Time), new(string), new(int64), new(uint64)} },
			"[[2026-03-01 P1 100 1] [2026-03-01 P2 50 1] [2026-04-01 P1 30 1]]"},
		{"carrier_lateness", []any{at("2026-03-01 00:00"), at("2026-03-03 00:00")},
			func() []any {
				return []any{new(time.Time), new(string), new(uint64), new(int64), new(int64), new(int64)}
			},
			"[[2026-03-01 cmcc 3 60 86400 86400] [2026-03-02 cmcc 1 120 120 120] [2026-03-02 cucc 1 3600 3600 3600]]"},
	}
	if len(cases) != len(analytics.Names()) {
		t.Fatalf("%d queries shipped, %d tested: %v", len(analytics.Names()), len(cases), analytics.Names())
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := run(t, conn, c.name, c.scan, c.args...); got != c.want {
				t.Fatalf("\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestWrongParameterCount(t *testing.T) {
	if _, err := analytics.Run(context.Background(), nil, "top_cards_this_cycle"); err == nil {
		t.Fatal("a query ran without its parameter")
	}
	if _, err := analytics.Run(context.Background(), nil, "no_such_query"); err == nil {
		t.Fatal("an unknown query ran")
	}
}
