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
	"sync"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/actuate"
	"github.com/cardmeter/cardmeter/pkg/cli"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// driftingCarrier keeps each card's state; it lists them two a page, and
// drops the first call it gets (the reconciliation must not miss it).
type driftingCarrier struct {
	mu      sync.Mutex
	active  map[string]bool
	dropped bool
}

func (f *driftingCarrier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/cards" {
		ids := make([]string, 0, len(f.active))
		for id := range f.active {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		cursor := r.URL.Query().Get("cursor")
		var items []map[string]string
		next := ""
		for _, id := range ids {
			if id <= cursor {
				continue
			}
			if len(items) == 2 {
				next = items[1]["iccid"]
				break
			}
			st := "suspended"
			if f.active[id] {
				st = "active"
			}
			items = append(items, map[string]string{"iccid": id, "state": st})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"items": items, "next": next})
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/") // cards/<iccid>/<action>
	if len(parts) != 3 {
		http.Error(w, "bad", http.StatusBadRequest)
		return
	}
	if !f.dropped {
		f.dropped = true
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	f.active[parts[1]] = parts[2] == "resume"
}

// The carrier drifted (a card cardmeter stopped is active there, one in
// service is suspended, one it lists is not cardmeter's, one of
// cardmeter's it does not list): reconcile reports each by kind and
// writes the finding to the log; with --fix it asks for resyncs, which
// the fold makes events with the action each card's state needs and the
// actuator sends, and the carrier agrees with cardmeter for every card
// both know.
func TestReconcileMendsDrift(t *testing.T) {
	fc := &driftingCarrier{active: map[string]bool{}}
	carrier := httptest.NewServer(fc)
	defer carrier.Close()
	conf := filepath.Join(t.TempDir(), "carriers.json")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`{"carriers": {"cmcc": {"base_url": %q,
  "actions": {"stop": {"path": "/cards/{{.ICCID}}/stop"}, "resume": {"path": "/cards/{{.ICCID}}/resume"}},
  "state": {"path": "/cards?cursor={{.Cursor}}", "status": "state"}}}}`, carrier.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleActuator}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		ActuatorConfig: conf, Actuator: actuate.ActuatorConfig{MaxInterval: 200 * time.Millisecond}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready) // a command to a partition still restoring is answered 503
	c := &client{t: t, base: p.URL}
	seen := events(t, p.JS)
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"})
	for i := 1; i <= 5; i++ {
		carrierName := "cmcc"
		if i == 5 {
			carrierName = "unicom" // another carrier's: not compared
		}
		c.putStored("/v1/cards/"+iccid(i), map[string]any{"account_id": fmt.Sprint("a", i), "plan_id": "p", "carrier": carrierName})
	}
	var out map[string]any
	if code := c.do("POST", "/v1/cards/"+iccid(1)+"/stop", "application/json", []byte(`{"operator":"ops"}`), &out); code != 200 {
		t.Fatalf("stop: %d %v", code, out)
	}
	// the actuator's stop of card 1 is the dropped call, retried: done
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := len(ofType(seen(), "cardmeter.card.actuation_succeeded.v1", iccid(1))); n != 1 {
			return fmt.Errorf("card 1's stop: %d outcomes", n)
		}
		return nil
	})
	fc.mu.Lock()
	fc.active[iccid(1)] = true  // stopped in cardmeter: switched on again by hand
	fc.active[iccid(2)] = false // in service in cardmeter
	fc.active[iccid(3)] = true  // agrees
	fc.active["89860000000000000999"] = true
	fc.mu.Unlock() // iccid(4) the carrier does not list
	run := func(args ...string) (int, map[string]any) {
		var stdout, stderr bytes.Buffer
		code := cli.Reconcile(append([]string{"--url", p.URL, "--carrier", "cmcc", "--actuator-config", conf, "--json"}, args...), &stdout, &stderr)
		var rep map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			t.Fatalf("exit %d, %s %s", code, stdout.String(), stderr.String())
		}
		return code, rep
	}
	code, rep := run("--fix")
	cards := rep["cards"].(map[string]any)
	if code != cli.ExitDrift || rep["compared"].(float64) != 4 || rep["sent"].(float64) != 2 ||
		fmt.Sprint(cards["active_at_carrier"]) != "["+iccid(1)+"]" || fmt.Sprint(cards["inactive_at_carrier"]) != "["+iccid(2)+"]" ||
		fmt.Sprint(cards["missing_at_carrier"]) != "["+iccid(4)+"]" || fmt.Sprint(cards["unknown_to_cardmeter"]) != "[89860000000000000999]" {
		t.Fatalf("reconcile --fix: exit %d, %v", code, rep)
	}
	// the resyncs go through the log: each card's event says the action,
	// the actuator sends it, and the finding is an event too
	testenv.Eventually(t, 30*time.Second, func() error {
		evs := seen()
		r1, r2 := ofType(evs, "cardmeter.card.resync_requested.v1", iccid(1)), ofType(evs, "cardmeter.card.resync_requested.v1", iccid(2))
		if len(r1) != 1 || r1[0].Data.Action != "stop" || len(r2) != 1 || r2[0].Data.Action != "resume" {
			return fmt.Errorf("resyncs: %+v %+v", r1, r2)
		}
		if d := ofType(evs, "cardmeter.carrier.drift_detected.v1", "cmcc"); len(d) != 1 || d[0].Data.Drift["missing_at_carrier"] != 1 {
			return fmt.Errorf("the finding: %+v", d)
		}
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if fc.active[iccid(1)] || !fc.active[iccid(2)] || !fc.active[iccid(3)] {
			return fmt.Errorf("the carrier: %v", fc.active)
		}
		return nil
	})
	code, rep = run()
	cards = rep["cards"].(map[string]any)
	if cards["active_at_carrier"] != nil || cards["inactive_at_carrier"] != nil || code != cli.ExitDrift {
		t.Fatalf("after the fixes: exit %d, %v", code, rep)
	}
	// a finding the fold could not make a valid event of is refused
	for field, body := range map[string]string{"counts": `{"counts":{"sideways":1}}`, "sent": `{"sent":-1}`, "cards": `{"cards":["89 86"]}`} {
		var prob map[string]any
		if code := c.do("POST", "/v1/carriers/cmcc/drift", "application/json", []byte(body), &prob); code != 400 || prob["field"] != field {
			t.Errorf("drift %s: %d %v", body, code, prob)
		}
	}
	// an empty one names every kind (0): the event checks against its schema
	if code := c.do("POST", "/v1/carriers/cmcc/drift", "application/json", []byte(`{}`), &out); code != 200 {
		t.Fatalf("an empty finding: %d %v", code, out)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		// (the two runs' findings, then this one)
		if d := ofType(seen(), "cardmeter.carrier.drift_detected.v1", "cmcc"); len(d) != 3 || fmt.Sprint(d[2].Data.Drift) !=
			"map[active_at_carrier:0 inactive_at_carrier:0 missing_at_carrier:0 unknown_to_cardmeter:0]" {
			return fmt.Errorf("findings: %+v", d)
		}
		return nil
	})
}

// With --reconcile-every the actuator reconciles by itself: the carrier
// comes to agree, the drift is a gauge and an event through the log.
func TestPeriodicReconciliation(t *testing.T) {
	fc := &driftingCarrier{active: map[string]bool{}, dropped: true}
	carrier := httptest.NewServer(fc)
	defer carrier.Close()
	conf := filepath.Join(t.TempDir(), "carriers.json")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`{"carriers": {"cmcc": {"base_url": %q,
  "actions": {"stop": {"path": "/cards/{{.ICCID}}/stop"}, "resume": {"path": "/cards/{{.ICCID}}/resume"}},
  "state": {"path": "/cards?cursor={{.Cursor}}", "status": "state"}}}}`, carrier.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleActuator}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		ActuatorConfig: conf, Actuator: actuate.ActuatorConfig{ReconcileEvery: 300 * time.Millisecond}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"})
	for i := 1; i <= 3; i++ {
		c.putStored("/v1/cards/"+iccid(i), map[string]any{"account_id": fmt.Sprint("a", i), "plan_id": "p", "carrier": "cmcc"})
	}
	seen := events(t, p.JS)
	fc.mu.Lock()
	fc.active[iccid(1)], fc.active[iccid(2)], fc.active[iccid(3)] = false, true, true // card 1 suspended there, in service here
	fc.mu.Unlock()
	testenv.Eventually(t, 30*time.Second, func() error {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if !fc.active[iccid(1)] {
			return fmt.Errorf("the carrier still has card 1 suspended")
		}
		return nil
	})
	// the finding is an event once, and again when it is gone; the gauge
	// says what the last round found
	// (rounds run from the start: one may have seen the cards before the
	// carrier listed them; what matters is card 1 found, then nothing)
	var told int
	testenv.Eventually(t, 30*time.Second, func() error {
		got := ofType(seen(), "cardmeter.carrier.drift_detected.v1", "cmcc")
		found := false
		for _, e := range got {
			found = found || (e.Data.Drift["inactive_at_carrier"] == 1 && fmt.Sprint(e.Data.Cards) == "["+iccid(1)+"]")
		}
		gone := map[string]int{"active_at_carrier": 0, "inactive_at_carrier": 0, "missing_at_carrier": 0, "unknown_to_cardmeter": 0}
		if !found || len(got) < 2 || fmt.Sprint(got[len(got)-1].Data.Drift) != fmt.Sprint(gone) || len(got[len(got)-1].Data.Cards) != 0 {
			return fmt.Errorf("drift events: %+v", got)
		}
		told = len(got)
		return nil
	})
	time.Sleep(time.Second) // three more rounds: nothing new to tell
	if got := ofType(seen(), "cardmeter.carrier.drift_detected.v1", "cmcc"); len(got) != told {
		t.Fatalf("%d drift events, then %d: an unchanged finding told again", told, len(got))
	}
	if v := gaugeOf(t, p, "cardmeter_carrier_drift_cards", "cmcc", "inactive_at_carrier"); v != 0 {
		t.Fatalf("the gauge says %v cards inactive at the carrier after the mend", v)
	}
}

// gaugeOf reads one labelled gauge from the pipeline's metrics (carrier,
// kind), failing when it is not there.
func gaugeOf(t *testing.T, p *Pipeline, name, carrier, kind string) float64 {
	t.Helper()
	families, err := p.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["carrier"] == carrier && labels["kind"] == kind {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s{carrier=%q,kind=%q}", name, carrier, kind)
	return 0
}

// lossyCarrier keeps each card's state and loses calls: every fifth
// action is answered 202 and not done, every third waits past a second
// before its answer; it lists its cards three a page.
type lossyCarrier struct {
	mu     sync.Mutex
	active map[string]bool
	calls  int
	lost   int
}

func (f *lossyCarrier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/cards" {
		f.mu.Lock()
		ids := make([]string, 0, len(f.active))
		for id := range f.active {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		var items []map[string]string
		next := ""
		for _, id := range ids {
			if id <= r.URL.Query().Get("cursor") {
				continue
			}
			if len(items) == 3 {
				next = items[2]["iccid"]
				break
			}
			items = append(items, map[string]string{"iccid": id, "state": map[bool]string{true: "active", false: "suspended"}[f.active[id]]})
		}
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"items": items, "next": next})
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/") // cards/<iccid>/<action>
	if len(parts) != 3 {
		http.Error(w, "bad", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.calls++
	n := f.calls
	if n%5 == 0 {
		f.lost++
	} else {
		f.active[parts[1]] = parts[2] == "resume"
	}
	f.mu.Unlock()
	if n%3 == 0 {
		time.Sleep(1200 * time.Millisecond)
	}
	w.WriteHeader(http.StatusAccepted)
}

// The actuator acts on 40 cards' stops and resumes through a carrier that
// loses a fifth of the calls without saying so and is slow on a third,
// and someone changes two cards at the carrier by hand: after
// `cardmeter reconcile --fix` and the actuator's resyncs (again while
// the carrier loses some), the carrier agrees with cardmeter on every
// card, and a run finds no drift.
func TestReconcileAfterALossyCarrier(t *testing.T) {
	const cards = 40
	fc := &lossyCarrier{active: map[string]bool{}}
	for i := 1; i <= cards; i++ {
		fc.active[iccid(i)] = true
	}
	carrier := httptest.NewServer(fc)
	defer carrier.Close()
	conf := filepath.Join(t.TempDir(), "carriers.json")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`{"carriers": {"cmcc": {"base_url": %q, "timeout": "5s",
  "actions": {"stop": {"path": "/cards/{{.ICCID}}/stop"}, "resume": {"path": "/cards/{{.ICCID}}/resume"}},
  "state": {"path": "/cards?cursor={{.Cursor}}", "status": "state"}}}}`, carrier.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleActuator}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		ActuatorConfig: conf}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 10*time.Second, p.Actuator.Healthy)
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"})
	for i := 1; i <= cards; i++ {
		c.putStored("/v1/cards/"+iccid(i), map[string]any{"account_id": fmt.Sprint("a", i%7), "plan_id": "p", "carrier": "cmcc"})
	}
	seen := events(t, p.JS)
	command := func(n int, what string) {
		t.Helper()
		var out map[string]any
		if code := c.do("POST", "/v1/cards/"+iccid(n)+"/"+what, "application/json", []byte(`{"operator":"ops"}`), &out); code != 200 {
			t.Fatalf("%s %d: %d %v", what, n, code, out)
		}
	}
	actions := 0
	for i := 1; i <= 30; i++ { // 1..30 stopped, 1..12 resumed again
		command(i, "stop")
		actions++
	}
	for i := 1; i <= 12; i++ {
		command(i, "resume")
		actions++
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if n := len(ofTypeAll(seen(), "cardmeter.card.actuation_succeeded.v1")); n != actions {
			return fmt.Errorf("%d actions reported done, want %d", n, actions)
		}
		return nil
	})
	fc.mu.Lock()
	lost := fc.lost
	fc.active[iccid(35)] = false // suspended by hand at the carrier
	fc.active[iccid(20)] = true  // and one switched back on
	fc.mu.Unlock()
	if lost == 0 {
		t.Fatal("the carrier lost no call: the test shows nothing")
	}

	run := func(args ...string) (int, map[string]any) {
		var stdout, stderr bytes.Buffer
		code := cli.Reconcile(append([]string{"--url", p.URL, "--carrier", "cmcc", "--actuator-config", conf, "--json"}, args...), &stdout, &stderr)
		var rep map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			t.Fatalf("exit %d, %s %s", code, stdout.String(), stderr.String())
		}
		return code, rep
	}
	// the resyncs may be lost too: a run, then the actuator's calls, until
	// a run finds nothing, at most 5
	var code int
	var rep map[string]any
	for i := 0; i < 5; i++ {
		code, rep = run("--fix")
		if code != cli.ExitOK {
			t.Fatalf("reconcile --fix %d: exit %d, %v", i+1, code, rep)
		}
		if rep["sent"].(float64) == 0 {
			break
		}
		t.Logf("reconcile --fix %d: %v resyncs for %v", i+1, rep["sent"], rep["cards"])
		actions += int(rep["sent"].(float64))
		testenv.Eventually(t, 60*time.Second, func() error {
			if n := len(ofTypeAll(seen(), "cardmeter.card.actuation_succeeded.v1")); n != actions {
				return fmt.Errorf("%d actions reported done, want %d", n, actions)
			}
			return nil
		})
	}
	if code, rep = run(); code != cli.ExitOK || rep["compared"].(float64) != cards {
		t.Fatalf("after the fixes: exit %d, %v", code, rep)
	}
	var list struct {
		Cards []struct {
			ICCID  string `json:"iccid"`
			Status string `json:"status"`
		} `json:"cards"`
	}
	if code := c.do("GET", "/v1/cards?limit=1000", "", nil, &list); code != 200 || len(list.Cards) != cards {
		t.Fatalf("GET /v1/cards: %d, %d cards", code, len(list.Cards))
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, cd := range list.Cards {
		if fc.active[cd.ICCID] != (cd.Status == "in_service") {
			t.Errorf("card %s: %s in cardmeter, active %v at the carrier", cd.ICCID, cd.Status, fc.active[cd.ICCID])
		}
	}
	t.Logf("%d carrier calls lost before the reconciliation, %d calls in all", lost, fc.calls)
}
