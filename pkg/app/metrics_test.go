package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/cardmeter/cardmeter/pkg/actuate"
	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/cli"
	"github.com/cardmeter/cardmeter/pkg/projector"
	"github.com/cardmeter/cardmeter/pkg/testenv"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// metricNames are the series names an expression reads.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// The dashboard and the alert rules name only metrics the pipeline serves
// on /metrics after a short run of every role (API, projector, clock,
// sink, notifier, actuator with reconciliation); the rules parse as
// Prometheus parses them; and the new figures count what happened: one
// manual stop and resume, a rejection by field, the cards by status.
func TestDashboardAndAlertsNameRealMetrics(t *testing.T) {
	rules, errs := rulefmt.ParseFile("../../deploy/grafana/rules.yml", false, model.UTF8Validation, parser.NewParser(parser.Options{}), nil)
	if len(errs) > 0 {
		t.Fatalf("deploy/grafana/rules.yml: %v", errs)
	}
	named := map[string][]string{} // metric -> where
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			for _, n := range metricNames(t, r.Expr) {
				named[n] = append(named[n], "rule "+r.Alert)
			}
		}
	}
	if len(named) < 8 {
		t.Fatalf("the rules name %d metrics", len(named))
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("../../deploy/grafana/dashboards/cardmeter.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	exprs := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs++
			for _, n := range metricNames(t, tg.Expr) {
				named[n] = append(named[n], "panel "+p.Title)
			}
		}
	}
	if exprs < 20 {
		t.Fatalf("the dashboard has %d expressions", exprs)
	}

	// a short run of every role
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer rcv.Close()
	carrier := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cards" {
			_ = json.NewEncoder(w).Encode(map[string]any{"items": []map[string]string{{"iccid": iccid(1), "state": "active"}}})
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer carrier.Close()
	conf := filepath.Join(t.TempDir(), "carriers.json")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`{"carriers": {"cmcc": {"base_url": %q,
  "actions": {"stop": {"path": "/cards/{{.ICCID}}/stop"}, "resume": {"path": "/cards/{{.ICCID}}/resume"}},
  "state": {"path": "/cards", "status": "state"}}}}`, carrier.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	p, err := Start(context.Background(), Config{Roles: AllRoles, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC), ClickHouse: ch, Sink: sinkConfigForTests(),
		AnalystUser: "analyst", AnalystPassword: "analyst",
		Projector:      projector.Config{CensusInterval: 200 * time.Millisecond, CheckpointInterval: 200 * time.Millisecond},
		Notifier:       webhook.Config{AllowPrivate: true},
		ActuatorConfig: conf, Actuator: actuate.ActuatorConfig{ReconcileEvery: 300 * time.Millisecond}, StatusEvery: 200 * time.Millisecond}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 20*time.Second, p.Projector.Ready)
	c := &client{t: t, base: p.URL}
	if code := c.do("PUT", "/v1/webhooks/ops", "application/json", []byte(`{"url":"`+rcv.URL+`","event_types":["cardmeter.card.*"]}`), nil); code != 201 {
		t.Fatalf("webhook: %d", code)
	}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1 << 30, "cycle_anchor_day": 1, "time_zone": "UTC"})
	for i := 1; i <= 3; i++ {
		c.putStored("/v1/cards/"+iccid(i), map[string]any{"account_id": fmt.Sprint("a", i), "plan_id": "p", "carrier": "cmcc"})
	}
	if code, out := c.post("/v1/accounts/a1/payments", map[string]any{"payment_id": "pay-1", "amount_fen": 5000}); code != 200 {
		t.Fatalf("payment: %d %v", code, out)
	}
	csv := "record_id,iccid,start_time,end_time,bytes_up,bytes_down\n" +
		"r1," + iccid(1) + ",2026-03-10T10:00:00Z,2026-03-10T11:00:00Z,0,100\n" +
		"r2," + iccid(2) + ",2026-03-10T10:00:00Z,2026-03-10T11:00:00Z,0,100\n" +
		"r3,89860000000000000000,2026-03-10T10:00:00Z,2026-03-10T11:00:00Z,0,100\n"
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "text/csv", []byte(csv), nil); code != 422 {
		t.Fatalf("usage with a bad record: %d", code)
	}
	for _, what := range []string{"stop", "resume"} {
		if code := c.do("POST", "/v1/cards/"+iccid(1)+"/"+what, "application/json", []byte(`{"operator":"ops"}`), nil); code != 200 {
			t.Fatalf("%s: %d", what, code)
		}
	}

	scrape := func() map[string]*dto.MetricFamily {
		resp, err := http.Get(p.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		tp := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := tp.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return fams
	}
	// series names as the text format has them (a histogram's _bucket too)
	served := func(fams map[string]*dto.MetricFamily) map[string]bool {
		out := map[string]bool{}
		for name, f := range fams {
			if len(f.GetMetric()) == 0 {
				continue
			}
			out[name] = true
			if f.GetType() == dto.MetricType_HISTOGRAM {
				out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
			}
		}
		return out
	}
	value := func(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
		f := fams[name]
		if f == nil {
			return -1
		}
	metrics:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
		return -1
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		fams := scrape()
		have := served(fams)
		var missing []string
		for n, where := range named {
			if !have[n] {
				missing = append(missing, fmt.Sprintf("%s (%s)", n, strings.Join(where, ", ")))
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			return fmt.Errorf("named but not served: %s", strings.Join(missing, "; "))
		}
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"cardmeter_stops_total", []string{"reason", "manual"}, 1},
			{"cardmeter_resumes_total", []string{"reason", "manual"}, 1},
			{"cardmeter_events_emitted_total", []string{"type", "cardmeter.card.stopped.v1"}, 1},
			{"cardmeter_cards", []string{"status", "in_service"}, 3},
			{"cardmeter_cards", []string{"status", "stopped"}, 0},
			{"cardmeter_ingest_records_total", []string{"carrier", "cmcc", "outcome", "accepted"}, 2},
			{"cardmeter_ingest_rejected_total", []string{"carrier", "cmcc", "field", "iccid"}, 1},
		} {
			if got := value(fams, c.name, c.labels...); got != c.want {
				return fmt.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		return nil
	})
	// the fleet's counts, from the partitions' last census
	testenv.Eventually(t, 10*time.Second, func() error {
		var fl api.FleetResponse
		if code := c.do("GET", "/v1/fleet", "", nil, &fl); code != 200 {
			return fmt.Errorf("fleet: %d", code)
		}
		if fl.InService != 3 || fl.Stopped != 0 || fl.Partitions != 2 || len(fl.Missing) != 0 || len(fl.Nearest) != 2 ||
			fl.Nearest[0].UsageBytes != 100 || fl.ByReason["manual"] != 0 || len(fl.RunOut) != 0 {
			return fmt.Errorf("fleet: %+v", fl)
		}
		return nil
	})
	// the console's charts, from ClickHouse as the analyst: card 1's day,
	// and its stop and resume in their hour
	testenv.Eventually(t, 30*time.Second, func() error {
		var daily struct {
			Days []api.DailyUsage `json:"days"`
		}
		if code := c.do("GET", "/v1/cards/"+iccid(1)+"/usage/daily", "", nil, &daily); code != 200 {
			return fmt.Errorf("daily usage: %d", code)
		}
		if len(daily.Days) != 1 || daily.Days[0].Day != "2026-03-10" || daily.Days[0].BytesDown != 100 || daily.Days[0].Records != 1 {
			return fmt.Errorf("daily usage: %+v", daily.Days)
		}
		var stops struct {
			PerHour []api.StopsHour `json:"per_hour"`
		}
		if code := c.do("GET", "/v1/fleet/stops?hours=24", "", nil, &stops); code != 200 {
			return fmt.Errorf("stops per hour: %d", code)
		}
		if fmt.Sprint(stops.PerHour) != "[{2026-03-10T12:00:00Z resumed manual 1} {2026-03-10T12:00:00Z stopped manual 1}]" {
			return fmt.Errorf("stops per hour: %v", stops.PerHour)
		}
		return nil
	})
	// the record an event names as its cause, and an account's ledger
	testenv.Eventually(t, 30*time.Second, func() error {
		var rec api.UsageRow
		if code := c.do("GET", "/v1/cards/"+iccid(1)+"/records/cmcc/r1", "", nil, &rec); code != 200 || rec.BytesDown != 100 || rec.StartTime != "2026-03-10T10:00:00Z" {
			return fmt.Errorf("record r1: %d %+v", code, rec)
		}
		if code := c.do("GET", "/v1/cards/"+iccid(1)+"/records/cmcc/r2", "", nil, nil); code != 404 {
			return fmt.Errorf("another card's record: %d", code)
		}
		var ledger struct {
			Entries []api.LedgerEntry `json:"entries"`
		}
		if code := c.do("GET", "/v1/accounts/a1/ledger", "", nil, &ledger); code != 200 || len(ledger.Entries) != 1 ||
			ledger.Entries[0].Kind != "payment" || ledger.Entries[0].AmountFen != 5000 {
			return fmt.Errorf("ledger: %+v", ledger.Entries)
		}
		return nil
	})
	// every role reports itself: the status is healthy, with every figure
	testenv.Eventually(t, 20*time.Second, func() error {
		var out, errb bytes.Buffer
		code := cli.Status([]string{"--url", p.URL, "--json"}, &out, &errb)
		var st api.StatusResponse
		if err := json.Unmarshal(out.Bytes(), &st); err != nil {
			return fmt.Errorf("exit %d: %s %s", code, out.String(), errb.String())
		}
		roles := map[string]bool{}
		for _, r := range st.Instances {
			roles[r.Role] = true
		}
		if code != cli.ExitOK || !st.Healthy || st.ClickHouseUp == nil || !*st.ClickHouseUp || st.SinkPending == nil || st.IngestPerSecond == nil ||
			len(st.Partitions) != 2 || st.Partitions[0].Owner == "" || st.Partitions[1].CheckpointAgeSeconds == nil || len(roles) != 6 {
			return fmt.Errorf("status: exit %d, roles %v\n%s", code, roles, out.String())
		}
		return nil
	})
}
