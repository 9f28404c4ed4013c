package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// receiver is a webhook endpoint: it verifies each delivery's signature
// and keeps what it took, by card, in order; fail decides an answer for
// a delivery before it is taken (0: take it).
type receiver struct {
	t      *testing.T
	secret string
	mu     sync.Mutex
	got    map[string][]string // card -> event ids, in the order taken
	seen   map[string]int      // event id -> deliveries seen (taken or not)
	bad    int                 // deliveries whose signature did not verify
	fail   func(id string, n int) (status int, retryAfter string, hang bool)
	srv    *httptest.Server
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t, got: map[string][]string{}, seen: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	id := req.Header.Get("webhook-id")
	r.mu.Lock()
	secret := r.secret
	r.mu.Unlock()
	if err := webhook.Verify(secret, id, req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature"), body, time.Now(), 5*time.Minute); err != nil {
		r.mu.Lock()
		r.bad++
		r.mu.Unlock()
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var env struct {
		ID      string `json:"id"`
		Subject string `json:"subject"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.ID != id {
		http.Error(w, "not the event the id names", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.seen[id]++
	n := r.seen[id]
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		status, retryAfter, hang := fail(id, n)
		if hang {
			time.Sleep(1500 * time.Millisecond) // past the notifier's timeout
			return
		}
		if status != 0 {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(status)
			return
		}
	}
	r.mu.Lock()
	r.got[env.Subject] = append(r.got[env.Subject], id)
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// publishEvents publishes n events for each card, alternating stopped and
// resumed, as the projector does (ids deterministic, on the card's subject).
func publishEvents(t *testing.T, js jetstream.JetStream, cards, n int) map[string][]string {
	return publishEventsFrom(t, js, cards, 0, n)
}

// publishEventsFrom publishes each card's events from to from+n-1.
func publishEventsFrom(t *testing.T, js jetstream.JetStream, cards, from, n int) map[string][]string {
	want := map[string][]string{}
	for i := from; i < from+n; i++ {
		for c := 0; c < cards; c++ {
			iccid := fmt.Sprintf("8986%016d", c)
			kind := "card.stopped"
			if i%2 == 1 {
				kind = "card.resumed"
			}
			id := fmt.Sprintf("ev-%d-%d", c, i)
			env := map[string]any{"specversion": "1.0", "id": id, "source": "cardmeter/projector", "type": "cardmeter." + kind + ".v1",
				"subject": iccid, "time": "2026-03-10T00:00:00Z", "datacontenttype": "application/json",
				"data": map[string]any{"iccid": iccid, "account_id": fmt.Sprint("acct-", c%2), "cause": "test"}}
			b, _ := json.Marshal(env)
			m := nats.NewMsg(broker.EventSubject(kind, iccid))
			m.Data = b
			m.Header.Set(jetstream.MsgIDHeader, id)
			if _, err := js.PublishMsg(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			want[iccid] = append(want[iccid], id)
		}
	}
	return want
}

func subscribe(t *testing.T, js jetstream.JetStream, sub webhook.Subscription) string {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), broker.BucketWebhooks)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	sub.Secrets = []webhook.Secret{{Key: secret}}
	if sub.StartTime.IsZero() {
		sub.StartTime = time.Now().Add(-time.Hour)
	}
	sub.Enabled = true
	if err := sub.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := webhook.NewStore(kv).Put(context.Background(), &sub, 0); err != nil {
		t.Fatal(err)
	}
	return secret
}

func runNotifier(t *testing.T, js jetstream.JetStream, cfg webhook.Config) (*webhook.Notifier, func()) {
	t.Helper()
	cfg.AllowPrivate = true // the receiver is on loopback
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Second
	}
	n := webhook.New(js, cfg, nil, testenv.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	return n, func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Error(err)
		}
	}
}

// Every event reaches the endpoint once it answers 2xx, each card's in
// order, through 500s, a 429 with Retry-After, and a timeout; every
// delivery verifies with the documented signature; events of other
// types and of another account are not sent.
func TestDeliveriesInOrderThroughFailures(t *testing.T) {
	_, js := testenv.JetStream(t)
	rcv := newReceiver(t)
	rcv.fail = func(id string, n int) (int, string, bool) {
		switch {
		case id == "ev-0-0" && n == 1:
			return 0, "", true // times out
		case id == "ev-2-1" && n <= 2:
			return http.StatusInternalServerError, "", false
		case id == "ev-2-0" && n == 1:
			return http.StatusTooManyRequests, "1", false
		}
		return 0, "", false
	}
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "crm", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.*"}, AccountID: "acct-0"})
	want := publishEvents(t, js, 6, 4)
	// an event of another kind: not the subscription's
	m := nats.NewMsg(broker.EventSubject("account.payment_received", "acct-0"))
	m.Data = []byte(`{"id":"ev-pay","type":"cardmeter.account.payment_received.v1","subject":"acct-0","data":{"account_id":"acct-0"}}`)
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	_, stop := runNotifier(t, js, webhook.Config{Instance: "n1", MaxInterval: 2 * time.Second})
	defer stop()
	testenv.Eventually(t, 60*time.Second, func() error {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for card, ids := range want {
			if card[len(card)-1]%2 == 1 { // acct-1's cards: not for this subscription
				if len(rcv.got[card]) > 0 {
					return fmt.Errorf("card %s of another account got %v", card, rcv.got[card])
				}
				continue
			}
			if fmt.Sprint(rcv.got[card]) != fmt.Sprint(ids) {
				return fmt.Errorf("card %s got %v, want %v in that order", card, rcv.got[card], ids)
			}
		}
		return nil
	})
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.bad > 0 {
		t.Fatalf("%d deliveries did not verify", rcv.bad)
	}
	if rcv.seen["ev-2-1"] != 3 || rcv.seen["ev-2-0"] != 2 || rcv.seen["ev-0-0"] < 2 {
		t.Fatalf("attempts: ev-2-1 %d (want 3), ev-2-0 %d (want 2), ev-0-0 %d (want ≥ 2)", rcv.seen["ev-2-1"], rcv.seen["ev-2-0"], rcv.seen["ev-0-0"])
	}
	if rcv.seen["ev-pay"] != 0 {
		t.Fatal("an event of a type the subscription does not take was sent")
	}
}

// A notifier stopped in the middle of its deliveries (an event failing,
// more behind it) loses none: the next one delivers every event, each
// card's in order, the interrupted ones again with the same webhook-id.
func TestNotifierStoppedMidDeliveryLosesNone(t *testing.T) {
	_, js := testenv.JetStream(t)
	rcv := newReceiver(t)
	var mu sync.Mutex
	down := true
	rcv.fail = func(id string, n int) (int, string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if down && id == "ev-3-2" {
			return http.StatusBadGateway, "", false
		}
		return 0, "", false
	}
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "ticketing", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.stopped.v1", "cardmeter.card.resumed.v1"}})
	want := publishEvents(t, js, 8, 6)
	_, stop := runNotifier(t, js, webhook.Config{Instance: "n1", MaxInterval: 300 * time.Millisecond})
	testenv.Eventually(t, 30*time.Second, func() error {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		if rcv.seen["ev-3-2"] < 2 {
			return fmt.Errorf("ev-3-2 seen %d times", rcv.seen["ev-3-2"])
		}
		return nil
	})
	stop()
	mu.Lock()
	down = false
	mu.Unlock()
	_, stop2 := runNotifier(t, js, webhook.Config{Instance: "n2", MaxInterval: 300 * time.Millisecond})
	defer stop2()
	testenv.Eventually(t, 60*time.Second, func() error {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for card, ids := range want {
			if got := dedupe(rcv.got[card]); fmt.Sprint(got) != fmt.Sprint(ids) {
				return fmt.Errorf("card %s got %v, want %v", card, rcv.got[card], ids)
			}
		}
		return nil
	})
}

// dedupe drops repeats (at-least-once: a receiver dedupes by webhook-id),
// keeping the first of each.
func dedupe(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// An endpoint that fails every attempt: each event goes to the dead
// letters once its retry window has passed (with the error and attempts),
// every attempt is listed, and past DisableAfter of nothing but failures
// the subscription is disabled, saying why.
func TestDeadLettersAndDisabling(t *testing.T) {
	_, js := testenv.JetStream(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	rcv.fail = func(string, int) (int, string, bool) { return http.StatusInternalServerError, "", false }
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "broken", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.*"}})
	publishEvents(t, js, 2, 2)
	_, stop := runNotifier(t, js, webhook.Config{Instance: "n1", RetryFor: 1500 * time.Millisecond, MaxInterval: 300 * time.Millisecond,
		DisableAfter: 4 * time.Second, Partitions: broker.DefaultTopology.Partitions})
	defer stop()
	dead, err := js.Stream(ctx, broker.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := dead.Info(ctx)
		if err != nil || info.State.Msgs != 4 {
			return fmt.Errorf("%v dead letters (%v), want 4", info.State.Msgs, err)
		}
		return nil
	})
	m, err := dead.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("webhook-id") == "" || !strings.Contains(m.Header.Get("Cardmeter-Error"), "500") || m.Header.Get("Cardmeter-Attempts") == "" {
		t.Fatalf("dead letter headers %v", m.Header)
	}
	kv, _ := js.KeyValue(ctx, broker.BucketWebhooks)
	store := webhook.NewStore(kv)
	// more events keep failing until the subscription has failed for
	// longer than DisableAfter
	more := 0
	testenv.Eventually(t, 30*time.Second, func() error {
		more++
		m := nats.NewMsg(broker.EventSubject("card.stopped", "89860000000000000009"))
		m.Data = []byte(fmt.Sprintf(`{"id":"more-%d","type":"cardmeter.card.stopped.v1","subject":"89860000000000000009","data":{}}`, more))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return err
		}
		sub, _, err := store.Get(ctx, "broken")
		if err != nil {
			return err
		}
		if sub.Enabled || !strings.Contains(sub.DisabledReason, "failed") {
			return fmt.Errorf("enabled %v, reason %q", sub.Enabled, sub.DisabledReason)
		}
		return nil
	})
	// and the log is told, for the fold to emit webhook.disabled.v1
	testenv.Eventually(t, 10*time.Second, func() error { return toldOnce(ctx, js, store, "broken") })
	attempts, err := webhook.Attempts(ctx, js, "broken", 10)
	if err != nil || len(attempts) != 10 {
		t.Fatalf("%d attempts listed (%v), want 10", len(attempts), err)
	}
	if a := attempts[0]; a.Status != 500 || a.Result == "" || a.EventID == "" || (a.Result == "failed" && a.NextTry == nil) {
		t.Fatalf("the last attempt: %+v", a)
	}
}

// toldOnce: the log has been told once that the webhook was disabled, and
// the subscription says so.
func toldOnce(ctx context.Context, js jetstream.JetStream, store *webhook.Store, id string) error {
	sub, _, err := store.Get(ctx, id)
	if err != nil {
		return err
	}
	if !sub.DisabledLogged {
		return fmt.Errorf("webhook %s: the log not told yet", id)
	}
	meter, err := js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return err
	}
	subject := broker.OutcomeSubject(broker.Partition(id, broker.DefaultTopology.Partitions))
	info, err := meter.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return err
	}
	if n := info.State.Subjects[subject]; n != 1 {
		return fmt.Errorf("%d messages on %s, want 1", n, subject)
	}
	told, err := meter.GetLastMsgForSubject(ctx, subject)
	if err != nil || !strings.Contains(string(told.Data), `"webhook.disabled.v1"`) || !strings.Contains(string(told.Data), `"webhook_id":"`+id+`"`) {
		return fmt.Errorf("the disabling in the log: %v %v", told, err)
	}
	return nil
}

// A notifier that died between disabling a webhook and telling the log:
// the next owner of the webhook finds it disabled and untold, tells the
// log once, and marks it told.
func TestDisablingToldAfterACrash(t *testing.T) {
	_, js := testenv.JetStream(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "gone-quiet", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.*"}})
	kv, _ := js.KeyValue(ctx, broker.BucketWebhooks)
	store := webhook.NewStore(kv)
	since := time.Now().Add(-80 * time.Hour)
	if _, err := store.Update(ctx, "gone-quiet", func(s *webhook.Subscription) error {
		s.Enabled, s.FailingSince, s.DisabledReason, s.UpdatedAt = false, &since, "every attempt failed since then", time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, stop := runNotifier(t, js, webhook.Config{Instance: "n1", Partitions: broker.DefaultTopology.Partitions})
	testenv.Eventually(t, 10*time.Second, func() error { return toldOnce(ctx, js, store, "gone-quiet") })
	stop()
	_, rev, err := store.Get(ctx, "gone-quiet")
	if err != nil {
		t.Fatal(err)
	}
	// told, it is not told again by the next owner
	n2, stop := runNotifier(t, js, webhook.Config{Instance: "n2", Partitions: broker.DefaultTopology.Partitions})
	defer stop()
	testenv.Eventually(t, 10*time.Second, n2.Healthy) // it owns every unit
	time.Sleep(500 * time.Millisecond)
	if err := toldOnce(ctx, js, store, "gone-quiet"); err != nil {
		t.Fatal(err)
	}
	if _, now, err := store.Get(ctx, "gone-quiet"); err != nil || now != rev {
		t.Fatalf("the told webhook was written again: revision %d, was %d (%v)", now, rev, err)
	}
}

// Replays: the dead letters go again once the endpoint is back, each
// card's in order and several cards at once (those taken leave the dead
// letters; a card whose letter fails again keeps its later ones behind
// it, for the next replay), and "since a time" sends every event stored
// from then on again, in order.
func TestReplays(t *testing.T) {
	_, js := testenv.JetStream(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	var mu sync.Mutex
	down, failOnce := true, "ev-1-0"
	rcv.fail = func(id string, _ int) (int, string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return http.StatusServiceUnavailable, "", false
		}
		if id == failOnce {
			failOnce = ""
			return http.StatusInternalServerError, "", false
		}
		return 0, "", false
	}
	before := time.Now().Add(-time.Minute)
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "replayed", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.*"}, StartTime: before})
	want := publishEvents(t, js, 4, 3)
	_, stop := runNotifier(t, js, webhook.Config{Instance: "n1", RetryFor: 500 * time.Millisecond, MaxInterval: 200 * time.Millisecond})
	defer stop()
	dead, _ := js.Stream(ctx, broker.StreamDead)
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := dead.Info(ctx)
		if err != nil || info.State.Msgs != 12 {
			return fmt.Errorf("%v dead letters (%v), want 12", info.State.Msgs, err)
		}
		return nil
	})
	mu.Lock()
	down = false
	mu.Unlock()
	kv, _ := js.KeyValue(ctx, broker.BucketWebhooks)
	store := webhook.NewStore(kv)
	// card 1's first letter fails again: its two later ones stay behind it
	if res := askReplay(t, store, "replayed", webhook.Replay{DeadLetters: true}); res.Delivered != 9 || res.Left != 3 || res.Error == "" {
		t.Fatalf("replay of the dead letters, one failing again: %+v", res)
	}
	if info, _ := dead.Info(ctx); info.State.Msgs != 3 {
		t.Fatalf("%d dead letters left, want card 1's three", info.State.Msgs)
	}
	if res := askReplay(t, store, "replayed", webhook.Replay{DeadLetters: true}); res.Delivered != 3 || res.Left != 0 || res.Error != "" {
		t.Fatalf("the second replay: %+v", res)
	}
	if info, _ := dead.Info(ctx); info.State.Msgs != 0 {
		t.Fatalf("%d dead letters left after they were taken", info.State.Msgs)
	}
	rcv.mu.Lock()
	for card, ids := range want {
		if fmt.Sprint(rcv.got[card]) != fmt.Sprint(ids) {
			t.Errorf("card %s got %v from the dead letters, want %v", card, rcv.got[card], ids)
		}
	}
	rcv.got = map[string][]string{}
	rcv.mu.Unlock()
	if res := askReplay(t, store, "replayed", webhook.Replay{Since: &before}); res.FromSeq != 1 || res.Error != "" {
		t.Fatalf("replay since %s: %+v", before, res)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for card, ids := range want {
			if fmt.Sprint(rcv.got[card]) != fmt.Sprint(ids) {
				return fmt.Errorf("card %s got %v again, want %v", card, rcv.got[card], ids)
			}
		}
		return nil
	})
}

// askReplay asks for a replay and waits for its result.
func askReplay(t *testing.T, store *webhook.Store, id string, rp webhook.Replay) *webhook.ReplayResult {
	t.Helper()
	ctx := context.Background()
	rp.ID, rp.RequestedAt = fmt.Sprint(time.Now().UnixNano()), time.Now()
	if _, err := store.Update(ctx, id, func(s *webhook.Subscription) error { s.Replay = &rp; return nil }); err != nil {
		t.Fatal(err)
	}
	var done *webhook.ReplayResult
	testenv.Eventually(t, 30*time.Second, func() error {
		sub, _, err := store.Get(ctx, id)
		if err != nil {
			return err
		}
		if sub.ReplayDone == nil || sub.ReplayDone.ID != rp.ID {
			return errors.New("the replay is not done")
		}
		done = sub.ReplayDone
		return nil
	})
	return done
}

// A replay sends only what the webhook asks for now: after its account
// filter changed, the other account's letters are removed, not sent; so is
// a letter of an earlier webhook of the same id.
func TestReplayTakesOnlyWhatTheWebhookAsksFor(t *testing.T) {
	_, js := testenv.JetStream(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	var mu sync.Mutex
	down := true
	rcv.fail = func(string, int) (int, string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return http.StatusServiceUnavailable, "", false
		}
		return 0, "", false
	}
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "narrowed", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.*"}})
	want := publishEvents(t, js, 2, 2) // card 0 of acct-0, card 1 of acct-1
	_, stop := runNotifier(t, js, webhook.Config{Instance: "n1", RetryFor: 500 * time.Millisecond, MaxInterval: 200 * time.Millisecond})
	defer stop()
	dead, _ := js.Stream(ctx, broker.StreamDead)
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := dead.Info(ctx)
		if err != nil || info.State.Msgs != 4 {
			return fmt.Errorf("%v dead letters (%v), want 4", info.State.Msgs, err)
		}
		return nil
	})
	// a letter left by an earlier webhook of this id
	old := nats.NewMsg(broker.DeadSubject("narrowed"))
	old.Data = []byte(`{"id":"ev-old","type":"cardmeter.card.stopped.v1","subject":"89860000000000000000","data":{"account_id":"acct-0"}}`)
	old.Header.Set("webhook-id", "ev-old")
	old.Header.Set("Cardmeter-Event-Subject", broker.EventSubject("card.stopped", "89860000000000000000"))
	old.Header.Set("Cardmeter-Consumer", "webhook-narrowed-1")
	if _, err := js.PublishMsg(ctx, old); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, broker.BucketWebhooks)
	store := webhook.NewStore(kv)
	if _, err := store.Update(ctx, "narrowed", func(s *webhook.Subscription) error { s.AccountID = "acct-0"; return nil }); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	if res := askReplay(t, store, "narrowed", webhook.Replay{DeadLetters: true}); res.Delivered != 2 || res.Left != 0 || res.Error != "" {
		t.Fatalf("replay: %+v, want card 0's two delivered", res)
	}
	if info, _ := dead.Info(ctx); info.State.Msgs != 0 {
		t.Fatalf("%d dead letters left: those not taken are removed", info.State.Msgs)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	card0, card1 := "89860000000000000000", "89860000000000000001"
	if fmt.Sprint(rcv.got[card0]) != fmt.Sprint(want[card0]) || len(rcv.got[card1]) != 0 {
		t.Fatalf("delivered %v, want only card 0's %v", rcv.got, want[card0])
	}
}

// An event's retry window runs from its first attempt, not from the
// notifier's start: a notifier stopped while an event fails, and the next
// one dead-letters it once the window has passed since that first attempt.
func TestRetryWindowOutlivesARestart(t *testing.T) {
	_, js := testenv.JetStream(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	rcv.fail = func(string, int) (int, string, bool) { return http.StatusInternalServerError, "", false }
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "window", URL: rcv.srv.URL, EventTypes: []string{"cardmeter.card.*"}})
	publishEvents(t, js, 1, 1)
	cfg := webhook.Config{Instance: "n1", RetryFor: 5 * time.Second, MaxInterval: 200 * time.Millisecond}
	_, stop := runNotifier(t, js, cfg)
	testenv.Eventually(t, 10*time.Second, func() error {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		if rcv.seen["ev-0-0"] < 2 {
			return errors.New("not failed twice yet")
		}
		return nil
	})
	time.Sleep(2500 * time.Millisecond)
	stop()
	restarted := time.Now()
	cfg.Instance = "n2"
	_, stop2 := runNotifier(t, js, cfg)
	defer stop2()
	dead, _ := js.Stream(ctx, broker.StreamDead)
	testenv.Eventually(t, 20*time.Second, func() error {
		info, err := dead.Info(ctx)
		if err != nil || info.State.Msgs != 1 {
			return fmt.Errorf("%v dead letters (%v)", info.State.Msgs, err)
		}
		return nil
	})
	// about 2.5 s of the window were left; a window started again would
	// take 5 s from the restart
	if waited := time.Since(restarted); waited > 4500*time.Millisecond {
		t.Fatalf("dead-lettered %s after the restart: the retry window started again", waited)
	}
}

// Two notifiers share the units (so the webhooks) between them, each
// webhook delivered by one; when one stops, the other takes its units and
// its webhooks' events go on, every event delivered, each card's in order.
func TestTwoNotifiersShareTheWebhooks(t *testing.T) {
	_, js := testenv.JetStream(t)
	n1, stop1 := runNotifier(t, js, webhook.Config{Instance: "n1"})
	n2, stop2 := runNotifier(t, js, webhook.Config{Instance: "n2"})
	defer stop2()
	var u1, u2 []int
	testenv.Eventually(t, 30*time.Second, func() error {
		u1, u2 = n1.Units(), n2.Units()
		if len(u1) == 0 || len(u2) == 0 || len(u1)+len(u2) != webhook.Units {
			return fmt.Errorf("units held: n1 %v, n2 %v", u1, u2)
		}
		return nil
	})
	for _, u := range u1 {
		if slices.Contains(u2, u) {
			t.Fatalf("unit %d held by both: n1 %v, n2 %v", u, u1, u2)
		}
	}
	// three webhooks on n1's units and three on n2's
	var ids []string
	for i, on1, on2 := 0, 0, 0; on1+on2 < 6; i++ {
		id := fmt.Sprint("hook-", i)
		switch u := webhook.UnitOf(id); {
		case slices.Contains(u1, u) && on1 < 3:
			on1++
		case slices.Contains(u2, u) && on2 < 3:
			on2++
		default:
			continue
		}
		ids = append(ids, id)
	}
	rcvs := map[string]*receiver{}
	for _, id := range ids {
		r := newReceiver(t)
		r.secret = subscribe(t, js, webhook.Subscription{ID: id, URL: r.srv.URL, EventTypes: []string{"cardmeter.card.*"}})
		rcvs[id] = r
	}
	delivered := func(want map[string][]string) func() error {
		return func() error {
			for id, r := range rcvs {
				r.mu.Lock()
				for card, evs := range want {
					if got := dedupe(r.got[card]); fmt.Sprint(got) != fmt.Sprint(evs) {
						r.mu.Unlock()
						return fmt.Errorf("webhook %s, card %s: got %v, want %v", id, card, got, evs)
					}
				}
				r.mu.Unlock()
			}
			return nil
		}
	}
	want := publishEvents(t, js, 4, 4)
	testenv.Eventually(t, 30*time.Second, delivered(want))
	stop1()
	testenv.Eventually(t, 30*time.Second, func() error {
		if u := n2.Units(); len(u) != webhook.Units {
			return fmt.Errorf("n2 holds %v after n1 stopped", u)
		}
		return nil
	})
	more := publishEventsFrom(t, js, 4, 4, 4)
	for card, evs := range more {
		want[card] = append(want[card], evs...)
	}
	testenv.Eventually(t, 30*time.Second, delivered(want))
	for id, r := range rcvs {
		r.mu.Lock()
		if r.bad != 0 {
			t.Errorf("webhook %s: %d deliveries did not verify", id, r.bad)
		}
		r.mu.Unlock()
	}
}
