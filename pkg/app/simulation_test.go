package app

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/sim"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// What-if plans through the API with the manual clock: an account paid
// overage in March; a simulation of March on the bigger plan says it
// would have been cheaper, and one of the unchanged plan equals what
// happened (the overage the fold charged, as the card's events have it).
// Simulations are scoped like reads, and run by the projector role.
func TestASimulationShowsABiggerPlanCheaper(t *testing.T) {
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.ClockStart = time.Date(2026, 2, 28, 16, 0, 0, 0, time.UTC) // 2026-03-01 Shanghai
		cfg.Tokens += ";acme " + tokAcctA + " read:account:a"
	})
	c.must(c.send("PUT", "/v1/plans/small", tokBilling, "application/json", `{"quota_bytes": 10000000, "monthly_fee_fen": 1000, "overage_fen_per_mb": 100}`), 200)
	c.must(c.send("PUT", "/v1/plans/large", tokBilling, "application/json", `{"quota_bytes": 100000000, "monthly_fee_fen": 2000}`), 200)
	c.must(c.send("PUT", "/v1/accounts/acme", tokBilling, "application/json", `{"credit_limit_fen": 1000000}`), 200)
	card := iccid(41)
	c.must(c.send("PUT", "/v1/cards/"+card, tokBilling, "application/json", `{"account_id":"acme","plan_id":"small","carrier":"cmcc"}`), 200)
	var rows []string
	for d := 2; d <= 20; d++ {
		rows = append(rows, fmt.Sprintf(`{"record_id":"r%d","iccid":%q,"start_time":"2026-03-%02dT10:00:00+08:00","end_time":"2026-03-%02dT11:00:00+08:00","bytes_up":0,"bytes_down":2000000}`, d, card, d, d))
	}
	c.must(c.send("PUT", "/v1/clock", tokAdmin, "application/json", `{"now":"2026-03-21T00:00:00+08:00"}`), 200)
	if r := c.send("POST", "/v1/usage?wait=true", tokCMCC, "application/x-ndjson", strings.Join(rows, "\n")); r.code != 200 {
		t.Fatalf("usage: %d %s", r.code, r.raw)
	}
	c.must(c.send("PUT", "/v1/clock", tokAdmin, "application/json", `{"now":"2026-04-02T00:00:00+08:00"}`), 200) // March closes

	run := func(body string) sim.Job {
		t.Helper()
		r := c.must(c.send("POST", "/v1/simulations", tokRead, "application/json", body), 202)
		var job sim.Job
		if err := json.Unmarshal(r.raw, &job); err != nil || job.ID == "" || r.header.Get("Location") != "/v1/simulations/"+job.ID {
			t.Fatalf("filed: %s %v", r.raw, err)
		}
		testenv.Eventually(t, 20*time.Second, func() error {
			raw := c.must(c.send("GET", "/v1/simulations/"+job.ID, tokRead, "", ""), 200).raw
			if err := json.Unmarshal(raw, &job); err != nil {
				return err
			}
			if job.Status == sim.StatusFailed {
				t.Fatalf("failed: %s", job.Error)
			}
			if job.Status != sim.StatusDone {
				return fmt.Errorf("simulation %s", job.Status)
			}
			return nil
		})
		return job
	}
	// March on the large plan: no overage (38 MB of 10 MB cost 29 MB begun at 1 yuan), a 10-yuan higher fee
	job := run(`{"account_id":"acme","from":"2026-03-01T00:00:00+08:00","to":"2026-04-01T00:00:00+08:00","plan":{"plan_id":"large"}}`)
	res := job.Result
	if res.Actual.OverageFen == 0 || res.Simulated.OverageFen != 0 || res.SavingsFen <= 0 ||
		res.SavingsFen != res.Actual.OverageFen+res.Actual.MonthlyFeeFen-res.Simulated.MonthlyFeeFen || len(res.Cards) != 1 ||
		res.Cards[0].SimPlanID != "large" || res.Actual.UsageBytes != 19*2_000_000 || res.Simulated.UsageBytes != res.Actual.UsageBytes {
		t.Fatalf("the larger plan: %+v", res)
	}
	// the unchanged plan: what happened, to the fen (the card's charged events)
	job = run(`{"account_id":"acme","from":"2026-03-01T00:00:00+08:00","to":"2026-04-01T00:00:00+08:00"}`)
	var hist struct {
		Events []struct {
			Type string `json:"type"`
			Time string `json:"time"`
			Data struct {
				AmountFen int64  `json:"amount_fen"`
				Detail    string `json:"detail"`
			} `json:"data"`
		} `json:"events"`
	}
	if err := json.Unmarshal(c.must(c.send("GET", "/v1/cards/"+card+"/events", tokRead, "", ""), 200).raw, &hist); err != nil {
		t.Fatal(err)
	}
	var overage, fees int64
	for _, e := range hist.Events {
		if e.Type == "cardmeter.account.charged.v1" && e.Time >= "2026-02-28T16:00:00Z" && e.Time < "2026-03-31T16:00:00Z" {
			switch e.Data.Detail {
			case "overage":
				overage += e.Data.AmountFen
			case "monthly_fee":
				fees += e.Data.AmountFen
			}
		}
	}
	if res := job.Result; res.SavingsFen != 0 || res.Actual.OverageFen != overage || res.Simulated.OverageFen != overage ||
		res.Actual.MonthlyFeeFen != fees || overage == 0 {
		t.Fatalf("unchanged: %+v, the events charged %d overage and %d fees", res, overage, fees)
	}
	// scoped: another account's token finds nothing; bad requests say what is wrong
	c.must(c.send("GET", "/v1/simulations/"+job.ID, tokAcctA, "", ""), 404)
	c.must(c.send("POST", "/v1/simulations", tokAcctA, "application/json", `{"account_id":"acme","from":"2026-03-01T00:00:00+08:00","to":"2026-04-01T00:00:00+08:00"}`), 404)
	r := c.must(c.send("POST", "/v1/simulations", tokRead, "application/json", `{"account_id":"acme","from":"2026-04-01T00:00:00+08:00","to":"2026-03-01T00:00:00+08:00"}`), 400)
	if r.body["field"] != "to" {
		t.Fatalf("a period backwards: %s", r.raw)
	}
	c.must(c.send("POST", "/v1/simulations", tokRead, "application/json", `{"account_id":"acme","from":"2026-03-01T00:00:00+08:00","to":"2026-04-01T00:00:00+08:00","plan":{"plan_id":"nope"}}`), 400)
	c.must(c.send("GET", "/v1/simulations/sim-nothing", tokRead, "", ""), 404)
	_ = p
}
