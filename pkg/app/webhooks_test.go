package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// The webhook routes: fields named when refused, a private address refused
// unless allowed, the secret shown once, a rotation during which both
// secrets sign, the attempts listed, no secret in any log line, and a
// delete that removes the subscription's consumer.
func TestWebhookRoutes(t *testing.T) {
	// every log line at every level, to show that no secret is in one
	observed, logs := observer.New(zap.DebugLevel)
	logger := zap.New(zapcore.NewTee(testenv.Logger(t).Core(), observed))
	start := func(allowPrivate bool) *Pipeline {
		p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleNotifier}, DataDir: t.TempDir(), NATSPort: -1,
			HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
			Notifier: webhook.Config{AllowPrivate: allowPrivate, Timeout: 2 * time.Second}}, logger)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		return p
	}
	var mu sync.Mutex
	var sigs, ids []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		sigs = append(sigs, r.Header.Get("webhook-signature"))
		ids = append(ids, r.Header.Get("webhook-id"))
		mu.Unlock()
	}))
	defer hook.Close()
	body := func(v map[string]any) []byte { b, _ := json.Marshal(v); return b }

	// refused without --webhook-allow-private: the receiver is on loopback
	closed := start(false)
	cc := &client{t: t, base: closed.URL}
	var prob api.Problem
	if code := cc.do("PUT", "/v1/webhooks/w1", "application/json", body(map[string]any{"url": hook.URL, "event_types": []string{"cardmeter.card.*"}}), &prob); code != 400 || prob.Field != "url" {
		t.Fatalf("a loopback URL: %d %+v", code, prob)
	}
	closed.Stop()

	p := start(true)
	c := &client{t: t, base: p.URL}
	for field, b := range map[string]map[string]any{
		"event_types": {"url": hook.URL, "event_types": []string{"card.stopped"}},
		"url":         {"url": "gopher://x", "event_types": []string{"cardmeter.card.*"}},
		"start_time":  {"url": hook.URL, "event_types": []string{"cardmeter.card.*"}, "start_time": "yesterday"},
	} {
		prob = api.Problem{}
		if code := c.do("PUT", "/v1/webhooks/w1", "application/json", body(b), &prob); code != 400 || prob.Field != field {
			t.Errorf("%s: %d %+v", field, code, prob)
		}
	}
	var made, got api.WebhookResponse
	if code := c.do("PUT", "/v1/webhooks/w1", "application/json", body(map[string]any{"url": hook.URL, "event_types": []string{"cardmeter.card.*"}}), &made); code != 201 || made.Secret == "" {
		t.Fatalf("create: %d %+v", code, made)
	}
	if code := c.do("GET", "/v1/webhooks/w1", "", nil, &got); code != 200 || got.Secret != "" || got.State != "enabled" {
		t.Fatalf("read: %d %+v (the secret is shown once)", code, got)
	}
	var again api.WebhookResponse
	if code := c.do("PUT", "/v1/webhooks/w1", "application/json", body(map[string]any{"url": hook.URL, "event_types": []string{"cardmeter.card.*"}, "description": "crm"}), &again); code != 200 || again.Secret != "" || again.Description != "crm" || again.StartTime != made.StartTime {
		t.Fatalf("change: %d %+v", code, again)
	}
	var rotated map[string]any
	if code := c.do("POST", "/v1/webhooks/w1/rotate-secret", "", nil, &rotated); code != 200 || rotated["secret"] == made.Secret {
		t.Fatalf("rotate: %d %v", code, rotated)
	}
	// an event: signed with both secrets while the old one overlaps
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 10, "cycle_anchor_day": 1, "time_zone": "UTC"})
	c.putStored("/v1/cards/"+iccid(7), map[string]any{"account_id": "a", "plan_id": "p", "carrier": "cmcc"})
	var cmd map[string]any
	if code := c.do("POST", "/v1/cards/"+iccid(7)+"/stop", "application/json", body(map[string]any{"operator": "ops", "note": "test"}), &cmd); code != 200 {
		t.Fatalf("stop: %d %v", code, cmd)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(sigs) == 0 {
			return errors.New("nothing delivered")
		}
		return nil
	})
	mu.Lock()
	if n := len(strings.Fields(sigs[0])); n != 2 {
		t.Fatalf("signatures during the overlap: %q, want two", sigs[0])
	}
	mu.Unlock()
	var attempts struct {
		Attempts []webhook.Attempt `json:"attempts"`
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if code := c.do("GET", "/v1/webhooks/w1/deliveries", "", nil, &attempts); code != 200 || len(attempts.Attempts) == 0 || attempts.Attempts[0].Result != "delivered" {
			return fmt.Errorf("deliveries: %d %+v", code, attempts)
		}
		return nil
	})
	// replays: exactly one kind, not before the webhook's start
	for field, b := range map[string]map[string]any{
		"dead_letters": {"dead_letters": true, "since": "2026-01-01T00:00:00Z"},
		"since":        {"since": "2000-01-01T00:00:00Z"},
	} {
		prob = api.Problem{}
		if code := c.do("POST", "/v1/webhooks/w1/replay", "application/json", body(b), &prob); code != 400 || prob.Field != field {
			t.Errorf("replay %v: %d %+v", b, code, prob)
		}
	}
	mu.Lock()
	delivered := len(ids) // all the webhook has had: the replay since its start sends them again
	mu.Unlock()
	var replayed api.WebhookResponse
	if code := c.do("POST", "/v1/webhooks/w1/replay", "application/json", body(map[string]any{"since": made.StartTime}), &replayed); code != 202 || replayed.Replay == nil {
		t.Fatalf("replay: %d %+v", code, replayed)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(ids[delivered:]) != fmt.Sprint(ids[:delivered]) {
			return fmt.Errorf("deliveries %v: want the first %d again, in order, under their webhook-ids", ids, delivered)
		}
		return nil
	})
	// a disabled webhook's replay would never be done: refused
	if code := c.do("PUT", "/v1/webhooks/w1", "application/json", body(map[string]any{"url": hook.URL, "event_types": []string{"cardmeter.card.*"}, "enabled": false}), nil); code != 200 {
		t.Fatalf("disable: %d", code)
	}
	prob = api.Problem{}
	if code := c.do("POST", "/v1/webhooks/w1/replay", "application/json", body(map[string]any{"dead_letters": true}), &prob); code != 409 || prob.Type != "cardmeter:refused/webhook-disabled" {
		t.Fatalf("replay of a disabled webhook: %d %+v", code, prob)
	}
	var list map[string][]api.WebhookResponse
	if code := c.do("GET", "/v1/webhooks", "", nil, &list); code != 200 || len(list["webhooks"]) != 1 {
		t.Fatalf("list: %d %v", code, list)
	}
	if code := c.do("DELETE", "/v1/webhooks/w1", "", nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code := c.do("GET", "/v1/webhooks/w1", "", nil, &got); code != 404 {
		t.Fatalf("read after delete: %d", code)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		st, err := p.JS.Stream(context.Background(), broker.StreamEvents)
		if err != nil {
			return err
		}
		for name := range st.ConsumerNames(context.Background()).Name() {
			if strings.HasPrefix(name, "webhook-w1-") {
				return fmt.Errorf("the deleted webhook's consumer %s is still there", name)
			}
		}
		return nil
	})
	// no secret in any log line, whole or its key alone
	if logs.Len() == 0 {
		t.Fatal("nothing logged: the check below shows nothing")
	}
	for _, e := range logs.All() {
		line, _ := json.Marshal(e.ContextMap())
		for _, secret := range []string{made.Secret, rotated["secret"].(string)} {
			key := strings.TrimPrefix(secret, "whsec_")
			if strings.Contains(e.Message+string(line), key) || strings.Contains(e.Message+string(line), "whsec_") {
				t.Fatalf("a secret in the log: %s %s", e.Message, line)
			}
		}
	}
}

// A webhook disabled by the notifier becomes an event through the fold:
// cardmeter.webhook.disabled.v1 on EVENTS, its subject the webhook's id.
func TestDisabledWebhookIsAnEvent(t *testing.T) {
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleNotifier}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		Notifier: webhook.Config{AllowPrivate: true, Timeout: time.Second, DisableAfter: time.Second, MaxInterval: 200 * time.Millisecond}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready) // a command to a partition still restoring is answered 503
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusBadGateway) }))
	defer broken.Close()
	c := &client{t: t, base: p.URL}
	b, _ := json.Marshal(map[string]any{"url": broken.URL, "event_types": []string{"cardmeter.card.*"}})
	var made api.WebhookResponse
	if code := c.do("PUT", "/v1/webhooks/flaky", "application/json", b, &made); code != 201 {
		t.Fatalf("create: %d %+v", code, made)
	}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 10, "cycle_anchor_day": 1, "time_zone": "UTC"})
	c.putStored("/v1/cards/"+iccid(3), map[string]any{"account_id": "a", "plan_id": "p", "carrier": "cmcc"})
	var cmd map[string]any
	if code := c.do("POST", "/v1/cards/"+iccid(3)+"/stop", "application/json", []byte(`{"operator":"ops"}`), &cmd); code != 200 {
		t.Fatalf("stop: %d %v", code, cmd)
	}
	seen := events(t, p.JS)
	testenv.Eventually(t, 30*time.Second, func() error {
		got := ofType(seen(), "cardmeter.webhook.disabled.v1", "flaky")
		if len(got) != 1 || got[0].Data.WebhookID != "flaky" || !strings.Contains(got[0].Data.Detail, "failed") {
			return fmt.Errorf("webhook.disabled events: %+v", got)
		}
		return nil
	})
	var got api.WebhookResponse
	if code := c.do("GET", "/v1/webhooks/flaky", "", nil, &got); code != 200 || got.State != "disabled" || got.DisabledReason == "" {
		t.Fatalf("the webhook: %d %+v", code, got)
	}
}
