package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// The services run as separate processes against an external JetStream
// server, as in docker-compose: the API in one, the projector in another,
// the clock and the sink in more; each with its own NATS user of least
// privilege (broker.RolePermissions), none of which may create the
// streams: the setup step does, as the admin. That the whole flow works
// (provisioning, usage, a stop, reads, event history, rejections, the
// audit, ClickHouse) shows each role's permissions are enough; the end
// shows what each may not do.
func TestServicesAgainstExternalNATS(t *testing.T) {
	pass := map[string]string{broker.UserAdmin: broker.NewPassword()}
	users := []broker.User{{Name: broker.UserAdmin, Password: pass[broker.UserAdmin]}}
	ch := testenv.ClickHouse(t)
	for _, role := range broker.Roles {
		pass[role] = broker.NewPassword()
		users = append(users, broker.User{Name: role, Password: pass[role], Permissions: broker.RolePermissions(role)})
	}
	srv, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1, Users: users}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	connect := func(user string) (*nats.Conn, jetstream.JetStream) {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, pass[user]), nats.CustomInboxPrefix(broker.InboxPrefix(user)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return nc, js
	}
	// the setup step, as the admin
	_, adminJS := connect(broker.UserAdmin)
	topo := broker.DefaultTopology
	topo.Partitions = 3
	if _, err := broker.Ensure(context.Background(), adminJS, topo); err != nil {
		t.Fatal(err)
	}
	// a carrier for the actuator's user to call
	var carrierMu sync.Mutex
	var carrierCalls []string
	carrier := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		carrierMu.Lock()
		carrierCalls = append(carrierCalls, r.URL.Path)
		carrierMu.Unlock()
	}))
	defer carrier.Close()
	carriers := filepath.Join(t.TempDir(), "carriers.json")
	if err := os.WriteFile(carriers, []byte(fmt.Sprintf(`{"carriers":{"cmcc":{"base_url":%q,"actions":{"stop":{"path":"/stop/{{.ICCID}}"}}}}}`, carrier.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(role string, roles ...string) *Pipeline {
		p, err := Start(context.Background(), Config{Roles: roles, NATSURL: srv.ClientURL(), NATS: NATSAuth{User: role, Password: pass[role]}, WaitForTopology: true,
			HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
			Partitions: 3, ManualClock: true, ClockStart: time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC), ClickHouse: ch,
			Sink: sinkConfigForTests(), Notifier: webhook.Config{AllowPrivate: true, Timeout: 2 * time.Second}, ActuatorConfig: carriers}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		return p
	}
	apiProc := start(broker.RoleIngest, RoleAPI)
	proj := start(broker.RoleProjector, RoleProjector)
	start(broker.RoleSink, RoleSink)
	start(broker.RoleClock, RoleClock)
	start(broker.RoleNotifier, RoleNotifier)
	start(broker.RoleActuator, RoleActuator)
	testenv.Eventually(t, 10*time.Second, proj.Projector.Ready)

	c := &client{t: t, base: apiProc.URL}
	// a webhook for stops, made through the API (its secret shown once),
	// delivered by the notifier's user
	var hookMu sync.Mutex
	var hooked []string
	var secret string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hookMu.Lock()
		defer hookMu.Unlock()
		if err := webhook.Verify(secret, r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, time.Now(), time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		hooked = append(hooked, string(body))
	}))
	defer hook.Close()
	var made api.WebhookResponse
	hb, _ := json.Marshal(map[string]any{"url": hook.URL, "event_types": []string{"cardmeter.card.stopped.v1"}})
	if code := c.do("PUT", "/v1/webhooks/stops", "application/json", hb, &made); code != 201 || !strings.HasPrefix(made.Secret, "whsec_") {
		t.Fatalf("a webhook: %d %+v", code, made)
	}
	hookMu.Lock()
	secret = made.Secret
	hookMu.Unlock()
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 100, "cycle_anchor_day": 27, "time_zone": "UTC"})
	var last uint64
	for i := 0; i < 5; i++ {
		out := c.putJSON("/v1/cards/"+iccid(100+i), map[string]any{"account_id": fmt.Sprint("acct", i), "plan_id": "p", "carrier": "cmcc", "auto_stop_over_quota": true})
		last = uint64(out["position"].(float64))
	}
	for i := 0; i < 5; i++ {
		got := c.card(iccid(100+i), last)
		if got.Status != "in_service" || got.Cycle.Start != "2026-02-27T00:00:00Z" || got.Cycle.End != "2026-03-27T00:00:00Z" {
			t.Fatalf("card %d: %+v", i, got)
		}
	}
	nd := fmt.Sprintf(`{"record_id":"x","iccid":"%s","start_time":"2026-03-04T00:00:00Z","end_time":"2026-03-04T01:00:00Z","bytes_up":101,"bytes_down":0}`, iccid(102))
	var res api.BatchResult
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(nd), &res); code != 200 {
		t.Fatalf("usage: %d %+v", code, res)
	}
	if got := c.card(iccid(102), res.Position); got.Status != "stopped" {
		t.Fatalf("card over quota: %+v", got)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		carrierMu.Lock()
		defer carrierMu.Unlock()
		if fmt.Sprint(carrierCalls) != "[/stop/"+iccid(102)+"]" {
			return fmt.Errorf("the carrier got %v", carrierCalls)
		}
		return nil
	})
	testenv.Eventually(t, 20*time.Second, func() error {
		hookMu.Lock()
		defer hookMu.Unlock()
		if len(hooked) != 1 || !strings.Contains(hooked[0], `"cardmeter.card.stopped.v1"`) || !strings.Contains(hooked[0], iccid(102)) {
			return fmt.Errorf("the webhook got %v", hooked)
		}
		return nil
	})
	// readiness reports how far behind the consumers are
	var rd map[string]any
	if code := c.do("GET", "/readyz", "", nil, &rd); code != 200 || rd["status"] != "ready" {
		t.Fatalf("readyz: %d %v", code, rd)
	}
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 20*time.Second, func() error {
		var n uint64
		if err := conn.QueryRow(context.Background(), "SELECT count() FROM card_events WHERE type = 'cardmeter.card.stopped.v1'").Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("%d stopped events in ClickHouse", n)
		}
		return nil
	})
	// the ingest user reads history, rejections and the audit
	if code := c.do("GET", "/v1/cards/"+iccid(102)+"/events", "", nil, &rd); code != 200 || len(rd["events"].([]any)) == 0 {
		t.Fatalf("events: %d %v", code, rd)
	}
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(`{"record_id":"y"}`), &res); code != 422 {
		t.Fatalf("a rejected record: %d", code)
	}
	if code := c.do("GET", "/v1/rejections", "", nil, &rd); code != 200 || len(rd["rejections"].([]any)) != 1 {
		t.Fatalf("rejections: %d %v", code, rd)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if code := c.do("GET", "/v1/audit", "", nil, &rd); code != 200 || len(rd["entries"].([]any)) < 8 {
			return fmt.Errorf("audit: %d %v", code, rd)
		}
		return nil
	})

	// a what-if simulation: the API files it, the projector (which may
	// read the log) runs it and writes its result
	var job map[string]any
	if code := c.do("POST", "/v1/simulations", "application/json",
		[]byte(`{"account_id":"acct2","from":"2020-01-01T00:00:00Z","to":"2021-01-01T00:00:00Z","plan":{"quota_bytes":1000000000}}`), &job); code != 202 {
		t.Fatalf("simulation: %d %v", code, job)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if code := c.do("GET", "/v1/simulations/"+job["id"].(string), "", nil, &rd); code != 200 || rd["status"] != "done" {
			return fmt.Errorf("simulation: %d %v", code, rd)
		}
		return nil
	})

	// the rebuild tool, as its own user, reads the whole log
	_, rebuildJS := connect(broker.RoleRebuild)
	if st, err := sink.Rebuild(context.Background(), rebuildJS, testenv.ClickHouse(t), 3, 0, nil, testenv.Logger(t)); err != nil || st.Messages == 0 {
		t.Fatalf("rebuild as its user: %+v, %v", st, err)
	}

	// and none may do what is not its role's
	if _, err := nats.Connect(srv.ClientURL()); err == nil {
		t.Error("a client without credentials connected")
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	refused := map[string][]string{
		broker.RoleIngest:    {broker.EventSubject("card.stopped", iccid(101)), broker.AcceptedSubject(0)},
		broker.RoleProjector: {broker.UsageSubject(0), broker.BillingSubject(0), broker.RejectedSubject("cmcc")},
		broker.RoleClock:     {broker.UsageSubject(0), broker.EventSubject("card.stopped", iccid(101))},
		broker.RoleSink:      {broker.UsageSubject(0), broker.EventSubject("card.stopped", iccid(101)), broker.AcceptedSubject(0)},
		broker.RoleRebuild:   {broker.UsageSubject(0), broker.EventSubject("card.stopped", iccid(101))},
	}
	for role, subjects := range refused {
		_, js := connect(role)
		for _, subj := range subjects {
			if _, err := js.Publish(short(), subj, []byte("{}")); err == nil {
				t.Errorf("%s published to %s", role, subj)
			}
		}
		if _, err := js.CreateOrUpdateStream(short(), jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}}); err == nil {
			t.Errorf("%s created a stream", role)
		}
		if err := js.DeleteStream(short(), broker.StreamMeter); err == nil {
			t.Errorf("%s deleted METER", role)
		}
	}
	// the API's user may touch no consumer on EVENTS (the sink's is there)
	// nor on METER (the projector's)
	_, ingestJS := connect(broker.RoleIngest)
	for _, stream := range []string{broker.StreamEvents, broker.StreamMeter} {
		if _, err := ingestJS.CreateOrUpdateConsumer(short(), stream, jetstream.ConsumerConfig{Durable: "x"}); err == nil {
			t.Errorf("ingest made a consumer on %s", stream)
		}
		if err := ingestJS.DeleteConsumer(short(), stream, "sink-"+ch.Database+"-events"); err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Errorf("ingest could delete a consumer on %s: %v", stream, err)
		}
	}

	// the sink uses its own consumers only: not a subscriber's on EVENTS
	_, sinkOnly := connect(broker.RoleSink)
	if _, err := sinkOnly.CreateOrUpdateConsumer(short(), broker.StreamEvents, jetstream.ConsumerConfig{Durable: "subscriber"}); err == nil {
		t.Error("the sink made or changed another's consumer on EVENTS")
	}

	// nor read another's replies (JetStream answers, delivered messages)
	sinkNC, sinkJS := connect(broker.RoleSink)
	denied := make(chan error, 4)
	sinkNC.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err })
	if _, err := sinkNC.SubscribeSync(broker.InboxPrefix(broker.RoleIngest) + ".>"); err != nil {
		t.Fatal(err)
	}
	if _, err := sinkNC.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		select {
		case err := <-denied:
			if !strings.Contains(err.Error(), "Permissions Violation for Subscription") {
				t.Errorf("subscribing to another's inbox: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the sink subscribed to another's inbox")
		}
	}
	// it may see that the directory exists (stream info), not read it
	kv, err := sinkJS.KeyValue(short(), broker.BucketDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(short(), "plan.p"); err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the sink read the directory: %v", err)
	}
}

// The all-in-one keeps everything in its data folder: stopped and started
// again, it has every card and every byte of usage, counted once.
func TestAllInOneRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	ch := testenv.ClickHouse(t)
	cfg := Config{DataDir: dir, NATSPort: -1, HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true,
		ClockStart: time.Date(2026, 5, 10, 0, 0, 0, 0, time.UTC), ClickHouse: ch, Sink: sinkConfigForTests()}
	p, err := Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, p.Projector.Ready) // a write's decision is final (200) once its partition folds
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1 << 30})
	c.putJSON("/v1/cards/"+iccid(7), map[string]any{"account_id": "a", "plan_id": "p", "carrier": "cmcc"})
	csv := "record_id,iccid,start_time,end_time,bytes_up,bytes_down\n" +
		"r1," + iccid(7) + ",2026-05-09T00:00:00Z,2026-05-09T01:00:00Z,1000,2000\n"
	var res api.BatchResult
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "text/csv", []byte(csv), &res); code != 200 {
		t.Fatalf("usage: %d", code)
	}
	c.card(iccid(7), res.Position)
	p.Stop()

	p, err = Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	c.base = p.URL
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready)
	// the same record again, in a new batch: counted once
	csv2 := csv + "r2," + iccid(7) + ",2026-05-09T02:00:00Z,2026-05-09T03:00:00Z,1,2\n"
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "text/csv", []byte(csv2), &res); code != 200 {
		t.Fatalf("usage after restart: %d", code)
	}
	if got := c.card(iccid(7), res.Position); got.Cycle.UsageBytes != 3003 {
		t.Fatalf("usage after restart: %+v, want 3003", got.Cycle)
	}
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 20*time.Second, func() error {
		var n, sum uint64
		if err := conn.QueryRow(context.Background(), "SELECT count(), sum(bytes_up + bytes_down) FROM usage_records").Scan(&n, &sum); err != nil {
			return err
		}
		if n != 2 || sum != 3003 {
			return fmt.Errorf("ClickHouse has %d rows, %d bytes; want 2, 3003", n, sum)
		}
		return nil
	})
}
