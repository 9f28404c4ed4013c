package app

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// What the console reads besides the older routes: who a token is, the
// rejections paged by cursor and filtered by field, and counted by carrier
// and field; an account's pools; a card's plan time zone; each
// partition's lag in the status.
func TestConsoleReads(t *testing.T) {
	_, c := securedPipeline(t, func(cfg *Config) {
		cfg.StatusEvery = 200 * time.Millisecond
		cfg.Tokens += ";acme " + tokAcctA + " read:account:a"
	})
	// who a token is
	me := c.must(c.send("GET", "/v1/whoami", tokAcctA, "", ""), 200).body
	if me["name"] != "acme" || me["read"] != false || fmt.Sprint(me["read_accounts"]) != "[a]" || me["open"] != false {
		t.Fatalf("whoami, an account's token: %v", me)
	}
	me = c.must(c.send("GET", "/v1/whoami", tokCMCC, "", ""), 200).body
	if me["read"] != false || fmt.Sprint(me["carriers"]) != "[cmcc]" {
		t.Fatalf("whoami, a carrier's token: %v", me)
	}
	if me = c.must(c.send("GET", "/v1/whoami", tokAdmin, "", ""), 200).body; me["admin"] != true || me["read"] != true || me["operator"] != true {
		t.Fatalf("whoami, the admin: %v", me)
	}
	c.must(c.send("GET", "/v1/whoami", "", "", ""), 401)
	c.must(c.send("GET", "/v1/whoami", "nope-0123456789", "", ""), 401)

	// seven rejected records: five of an unknown card (iccid), two of
	// account a's card that end before they start (end_time)
	var rows []string
	for i := 0; i < 5; i++ {
		rows = append(rows, row(fmt.Sprintf("u%d", i), iccid(40+i), "", 10))
	}
	rows = append(rows, fmt.Sprintf("b0,%s,,2026-03-10T10:30:00Z,2026-03-10T10:00:00Z,0,10", iccid(1)),
		fmt.Sprintf("b1,%s,,2026-03-10T10:30:00Z,2026-03-10T10:00:00Z,0,10", iccid(1)))
	// in two batches: two messages of the REJECTED stream, so that pages
	// cross from one to the next
	for _, batch := range [][]string{rows[:5], rows[5:]} {
		if r := c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(batch...)); r.code != 422 {
			t.Fatalf("usage: %d %s", r.code, r.raw)
		}
	}
	// paged by any size, with or without the carrier: every one once, in
	// order, the last page (full or not) without a cursor
	pageAll := func(query string, limit int) (seen []string, pages int) {
		after := ""
		for {
			if pages++; pages > 8 {
				t.Fatalf("more pages than the records: %v", seen)
			}
			q := fmt.Sprintf("/v1/rejections?limit=%d%s", limit, query)
			if after != "" {
				q += "&after=" + after
			}
			b := c.must(c.send("GET", q, tokRead, "", ""), 200).body
			for _, v := range b["rejections"].([]any) {
				seen = append(seen, v.(map[string]any)["record"].(map[string]any)["record_id"].(string))
			}
			next, more := b["next_after"].(string)
			if !more {
				return seen, pages
			}
			after = next
		}
	}
	for _, pc := range []struct {
		query string
		limit int
		pages int
	}{{"", 3, 3}, {"", 7, 1}, {"", 1, 7}, {"", 5, 2}, {"&carrier=cmcc", 2, 4}, {"&carrier=cmcc&pending=true", 4, 2}} {
		seen, pages := pageAll(pc.query, pc.limit)
		if strings.Join(seen, ",") != "u0,u1,u2,u3,u4,b0,b1" || pages != pc.pages {
			t.Fatalf("pages of %d%s: %d pages held %v, want %d", pc.limit, pc.query, pages, seen, pc.pages)
		}
	}
	if seen, _ := pageAll("&carrier=cucc", 2); len(seen) != 0 {
		t.Fatalf("another carrier's pages held %v", seen)
	}
	c.must(c.send("GET", "/v1/rejections?after=x", tokRead, "", ""), 400)
	b := c.must(c.send("GET", "/v1/rejections?field=end_time", tokRead, "", ""), 200).body
	if n := len(b["rejections"].([]any)); n != 2 || b["next_after"] != nil {
		t.Fatalf("the end_time rejections: %d, %v", n, b)
	}
	// counted by carrier and field; an account's token counts its own only
	b = c.must(c.send("GET", "/v1/rejections/summary", tokRead, "", ""), 200).body
	if got := fmt.Sprint(b["counts"]); b["complete"] != true ||
		got != "[map[carrier:cmcc field:end_time pending:2 total:2] map[carrier:cmcc field:iccid pending:5 total:5]]" {
		t.Fatalf("summary: %v", b)
	}
	b = c.must(c.send("GET", "/v1/rejections/summary", tokAcctA, "", ""), 200).body
	if got := fmt.Sprint(b["counts"]); got != "[map[carrier:cmcc field:end_time pending:2 total:2]]" {
		t.Fatalf("summary for account a (whose card iccid(1) the bad bytes name): %v", got)
	}

	// an account's pools; a card's time zone
	c.must(c.send("PUT", "/v1/pools/shared", tokBilling, "application/json", `{"account_id":"a","quota_bytes":5000000}`), 200)
	c.must(c.send("PUT", "/v1/plans/utc", tokBilling, "application/json", `{"quota_bytes": 1000000, "time_zone": "UTC"}`), 200)
	c.must(c.send("PUT", "/v1/cards/"+iccid(50), tokBilling, "application/json", `{"account_id":"a","plan_id":"utc","carrier":"cmcc","pool_id":"shared"}`), 200)
	testenv.Eventually(t, 5*time.Second, func() error {
		a := c.send("GET", "/v1/accounts/a", tokRead, "", "").body
		if fmt.Sprint(a["pools"]) != "[map[cards:1 cycle:map[end:2026-03-31T16:00:00Z overshoot_bytes:0 quota_bytes:5e+06 start:2026-02-28T16:00:00Z usage_bytes:0] exhausted:false pool_id:shared quota_bytes:5e+06 time_zone:Asia/Shanghai usage_bytes:0]]" {
			return fmt.Errorf("account a's pools: %v", a["pools"])
		}
		return nil
	})
	if z := c.must(c.send("GET", "/v1/cards/"+iccid(50), tokRead, "", ""), 200).body["time_zone"]; z != "UTC" {
		t.Fatalf("card on the UTC plan: time_zone %v", z)
	}
	if z := c.must(c.send("GET", "/v1/cards/"+iccid(1), tokRead, "", ""), 200).body["time_zone"]; z != "Asia/Shanghai" {
		t.Fatalf("card on a plan naming no zone: time_zone %v", z)
	}

	// each partition's lag adds up to the projector's (at rest: none)
	testenv.Eventually(t, 5*time.Second, func() error {
		st := c.send("GET", "/v1/status", tokRead, "", "").body
		parts, _ := st["partitions"].([]any)
		if len(parts) != 2 {
			return fmt.Errorf("status partitions: %v", st["partitions"])
		}
		var sum float64
		for _, pt := range parts {
			sum += pt.(map[string]any)["lag_messages"].(float64)
		}
		if sum != st["projector_lag_messages"] || sum != 0 {
			return fmt.Errorf("partitions' lag %v, the projector's %v", sum, st["projector_lag_messages"])
		}
		return nil
	})

	// a cause of another account's is not there for an account's token
	c.must(c.send("GET", "/v1/accounts/b/causes/x", tokAcctA, "", ""), 404)
	c.must(c.send("GET", "/v1/accounts/a/causes/x?at=yesterday", tokAcctA, "", ""), 400)
	// a plan or a pool in the server's own zone is refused
	c.must(c.send("PUT", "/v1/plans/local", tokBilling, "application/json", `{"quota_bytes": 1, "time_zone": "Local"}`), 400)
	c.must(c.send("PUT", "/v1/pools/local", tokBilling, "application/json", `{"account_id":"a","quota_bytes":1,"time_zone":"Local"}`), 400)
	// a summary further back than a week is refused
	c.must(c.send("GET", "/v1/rejections/summary?since=2020-01-01T00:00:00Z", tokRead, "", ""), 400)
}
