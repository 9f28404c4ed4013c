package app

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/actuate"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// fakeCarrier is a carrier's provisioning API: it records each card's
// calls in order, checks the token and the idempotency key, and answers
// as fail says.
type fakeCarrier struct {
	mu    sync.Mutex
	calls map[string][]string // iccid -> actions taken, in order
	tries map[string]int      // iccid/action -> calls seen
	fail  func(iccid, action string, try int) int
}

func (f *fakeCarrier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// /cards/<iccid>/<action>
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 3 || r.Header.Get("Authorization") != "Bearer sesame" || r.Header.Get("Idempotency-Key") == "" {
		http.Error(w, "bad call", http.StatusBadRequest)
		return
	}
	iccid, action := parts[1], parts[2]
	f.mu.Lock()
	f.tries[iccid+"/"+action]++
	try := f.tries[iccid+"/"+action]
	f.mu.Unlock()
	if code := f.fail(iccid, action, try); code != 0 {
		http.Error(w, "no", code)
		return
	}
	f.mu.Lock()
	f.calls[iccid] = append(f.calls[iccid], action)
	f.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// Stops and resumes reach the card's carrier in order per card, through
// a failed call; a refusal is reported failed; a card of a carrier with no
// driver is left alone; each outcome is folded into the card's history.
func TestActuationReachesTheCarrier(t *testing.T) {
	fc := &fakeCarrier{calls: map[string][]string{}, tries: map[string]int{}}
	fc.fail = func(card, action string, try int) int {
		switch {
		case card == iccid(2) && try == 1:
			return http.StatusServiceUnavailable
		case card == iccid(3):
			return http.StatusNotFound
		}
		return 0
	}
	carrier := httptest.NewServer(fc)
	defer carrier.Close()
	t.Setenv("TEST_CARRIER_TOKEN", "sesame")
	conf := filepath.Join(t.TempDir(), "carriers.json")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`{"carriers": {"cmcc": {"base_url": %q, "headers": {"Authorization": "Bearer ${TEST_CARRIER_TOKEN}"},
  "actions": {"stop": {"method": "POST", "path": "/cards/{{.ICCID}}/suspend", "body": "{\"reasons\": {{json .Reasons}}}"},
              "resume": {"method": "POST", "path": "/cards/{{.ICCID}}/resume"}}}}}`, carrier.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleActuator}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		ActuatorConfig: conf, Actuator: actuate.ActuatorConfig{MaxInterval: 200 * time.Millisecond}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 10*time.Second, p.Actuator.Healthy)
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"})
	for i, carrierName := range []string{"cmcc", "cmcc", "cmcc", "unicom"} {
		c.putStored("/v1/cards/"+iccid(i+1), map[string]any{"account_id": fmt.Sprint("a", i), "plan_id": "p", "carrier": carrierName})
	}
	seen := events(t, p.JS)
	command := func(n int, what string) {
		t.Helper()
		var out map[string]any
		if code := c.do("POST", "/v1/cards/"+iccid(n)+"/"+what, "application/json", []byte(`{"operator":"ops"}`), &out); code != 200 {
			t.Fatalf("%s %d: %d %v", what, n, code, out)
		}
	}
	command(1, "stop")
	command(2, "stop")
	command(3, "stop")
	command(4, "stop")
	command(1, "resume")
	command(2, "resume") // behind its stop, whose first call fails
	testenv.Eventually(t, 30*time.Second, func() error {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if got := fmt.Sprint(fc.calls[iccid(1)]); got != "[suspend resume]" {
			return fmt.Errorf("card 1 at the carrier: %s", got)
		}
		if got := fmt.Sprint(fc.calls[iccid(2)]); got != "[suspend resume]" {
			return fmt.Errorf("card 2 at the carrier: %s", got)
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		evs := seen()
		ok := 0
		for _, e := range evs {
			if e.Type == "cardmeter.card.actuation_succeeded.v1" {
				ok++
			}
		}
		if ok != 4 {
			return fmt.Errorf("%d actuation_succeeded, want 4 (cards 1 and 2 twice)", ok)
		}
		bad := ofType(evs, "cardmeter.card.actuation_failed.v1", iccid(3))
		if len(bad) != 1 || !strings.Contains(bad[0].Data.Detail, "404") || bad[0].Data.Action != "stop" || bad[0].Data.Carrier != "cmcc" {
			return fmt.Errorf("card 3's failure: %+v", bad)
		}
		return nil
	})
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.tries[iccid(2)+"/suspend"] != 2 || fc.tries[iccid(2)+"/resume"] != 2 { // each first call fails
		t.Fatalf("card 2: %d stop calls, %d resume calls, want two each", fc.tries[iccid(2)+"/suspend"], fc.tries[iccid(2)+"/resume"])
	}
	if len(fc.calls[iccid(4)]) != 0 || fc.tries[iccid(3)+"/suspend"] != 1 {
		t.Fatalf("a card of a carrier without a driver was called (%v), or a refusal was retried (%d calls)", fc.calls[iccid(4)], fc.tries[iccid(3)+"/suspend"])
	}
	// each outcome names the event it answers, in the order acted on
	evs := seen()
	outcomes := ofType(evs, "cardmeter.card.actuation_succeeded.v1", iccid(2))
	stops, resumes := ofType(evs, "cardmeter.card.stopped.v1", iccid(2)), ofType(evs, "cardmeter.card.resumed.v1", iccid(2))
	if len(outcomes) != 2 || len(stops) != 1 || len(resumes) != 1 ||
		outcomes[0].Data.Cause != "event:"+stops[0].ID || outcomes[1].Data.Cause != "event:"+resumes[0].ID {
		t.Fatalf("card 2's outcomes do not answer its stop then its resume: %+v", outcomes)
	}
}

// A carrier that is down does not hold back the others: with two cards
// acted on at once, four cards waiting to retry at the broken carrier,
// the cards of the working one are switched off meanwhile.
func TestACarrierDownDoesNotHoldTheOthers(t *testing.T) {
	fc := &fakeCarrier{calls: map[string][]string{}, tries: map[string]int{}, fail: func(string, string, int) int { return 0 }}
	working := httptest.NewServer(fc)
	defer working.Close()
	var downCalls sync.Map
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downCalls.Store(r.URL.Path, true)
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	t.Setenv("TEST_CARRIER_TOKEN", "sesame")
	conf := filepath.Join(t.TempDir(), "carriers.json")
	entry := func(base string) string {
		return fmt.Sprintf(`{"base_url": %q, "headers": {"Authorization": "Bearer ${TEST_CARRIER_TOKEN}"}, "actions": {"stop": {"path": "/cards/{{.ICCID}}/suspend"}}}`, base)
	}
	if err := os.WriteFile(conf, []byte(`{"carriers": {"cmcc": `+entry(working.URL)+`, "cucc": `+entry(down.URL)+`}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleActuator}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		ActuatorConfig: conf, Actuator: actuate.ActuatorConfig{Parallel: 2, MaxInterval: 200 * time.Millisecond}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready) // a command to a partition still restoring is answered 503
	testenv.Eventually(t, 10*time.Second, p.Actuator.Healthy)
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"})
	for i := 1; i <= 6; i++ {
		carrierName := "cucc" // 1..4 at the broken carrier
		if i > 4 {
			carrierName = "cmcc"
		}
		c.putStored("/v1/cards/"+iccid(i), map[string]any{"account_id": fmt.Sprint("a", i), "plan_id": "p", "carrier": carrierName})
	}
	for i := 1; i <= 6; i++ {
		var out map[string]any
		if code := c.do("POST", "/v1/cards/"+iccid(i)+"/stop", "application/json", []byte(`{"operator":"ops"}`), &out); code != 200 {
			t.Fatalf("stop %d: %d %v", i, code, out)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if len(fc.calls[iccid(5)]) != 1 || len(fc.calls[iccid(6)]) != 1 {
			return fmt.Errorf("the working carrier's cards: %v", fc.calls)
		}
		return nil
	})
	for i := 1; i <= 4; i++ {
		if _, tried := downCalls.Load("/cards/" + iccid(i) + "/suspend"); !tried {
			t.Errorf("card %d was never tried at the broken carrier", i)
		}
	}
}
