package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/projector"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// natsServer runs a JetStream server the test can stop and start again on
// the same port and files, as an outage would.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	s    *server.Server
}

func (n *natsServer) start() {
	n.t.Helper()
	port := n.port
	if port == 0 {
		port = -1
	}
	s, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: n.dir, Port: port}, testenv.Logger(n.t))
	if err != nil {
		n.t.Fatal(err)
	}
	n.s, n.port = s, portOf(s)
}

func portOf(s *server.Server) int {
	var port int
	fmt.Sscanf(s.ClientURL()[strings.LastIndex(s.ClientURL(), ":")+1:], "%d", &port) //nolint:errcheck // a URL the server made
	return port
}

func (n *natsServer) stop() {
	n.s.Shutdown()
	n.s.WaitForShutdown()
}

func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

func usageCSV(rows ...string) []byte {
	return []byte("record_id,iccid,start_time,end_time,bytes_up,bytes_down\n" + strings.Join(rows, "\n") + "\n")
}

func usageRow(id string, card int, bytes int) string {
	return fmt.Sprintf("%s,%s,2026-05-09T00:00:00Z,2026-05-09T01:00:00Z,0,%d", id, iccid(card), bytes)
}

// Start-up waits for a NATS server that comes up after it; a NATS outage
// while the pipeline runs is ridden out: the partitions come back by
// themselves, and every record acknowledged before, during and after
// counts once.
func TestPipelineRidesOutNATSOutages(t *testing.T) {
	ns := &natsServer{t: t, dir: t.TempDir()}
	ns.start()
	url := ns.url()
	ns.stop()
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(1500 * time.Millisecond)
		ns.start()
	}()
	cfg := Config{DataDir: t.TempDir(), NATSURL: url, HTTPAddr: "127.0.0.1:0", Partitions: 4, ManualClock: true,
		Roles: []string{RoleAPI, RoleProjector, RoleClock}, StartTimeout: time.Minute,
		ClockStart: time.Date(2026, 5, 10, 0, 0, 0, 0, time.UTC), Projector: projector.Config{CheckpointInterval: 200 * time.Millisecond}}
	p, err := Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("start-up gave up on a NATS server that came up 1.5 s later: %v", err)
	}
	t.Cleanup(p.Stop)
	// (ns is the test's again once its restart has returned)
	<-restarted
	testenv.Eventually(t, 20*time.Second, p.Projector.Ready) // a write's decision is final (200) once its partition folds
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1 << 30})
	for i := 0; i < 8; i++ {
		c.putJSON(fmt.Sprintf("/v1/cards/%s", iccid(i)), map[string]any{"account_id": fmt.Sprint("acct", i), "plan_id": "p", "carrier": "cmcc"})
	}
	post := func(rows ...string) uint64 {
		var res api.BatchResult
		for {
			code := c.do("POST", "/v1/usage?carrier=cmcc", "text/csv", usageCSV(rows...), &res)
			if code == 200 {
				return res.Position
			}
			if code != 503 {
				t.Fatalf("usage: %d", code)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for i := 0; i < 8; i++ {
		post(usageRow(fmt.Sprint("a", i), i, 100))
	}
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready)

	ns.stop()
	time.Sleep(time.Second)
	ns.start()
	var last uint64
	for i := 0; i < 8; i++ {
		last = post(usageRow(fmt.Sprint("b", i), i, 10), usageRow(fmt.Sprint("a", i), i, 100)) // a re-sent record counts once
	}
	testenv.Eventually(t, 30*time.Second, p.Projector.Ready)
	for i := 0; i < 8; i++ {
		if got := c.card(iccid(i), last); got.Cycle.UsageBytes != 110 {
			t.Errorf("card %d after the outage: %d bytes, want 110", i, got.Cycle.UsageBytes)
		}
	}
}

// A partition that cannot restore (a checkpoint piece is gone) retries and
// says so: its cards answer 503 with Retry-After, /readyz names it, and
// /healthz fails so that a supervisor restarts the process; the other
// partitions serve.
func TestAPartitionThatCannotRestoreSaysSo(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, NATSPort: -1, HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true,
		Roles: []string{RoleAPI, RoleProjector, RoleClock}, ClockStart: time.Date(2026, 5, 10, 0, 0, 0, 0, time.UTC)}
	p, err := Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready) // a write's decision is final (200) only once its partition folds
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/p", map[string]any{"quota_bytes": 1 << 30})
	cards := map[int]int{} // partition -> a card of it
	for i := 0; len(cards) < 2; i++ {
		acct := fmt.Sprint("acct", i)
		c.putJSON("/v1/cards/"+iccid(i), map[string]any{"account_id": acct, "plan_id": "p", "carrier": "cmcc"})
		cards[broker.Partition(acct, 2)] = i
	}
	var res api.BatchResult
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "text/csv", usageCSV(usageRow("r1", cards[0], 5), usageRow("r2", cards[1], 7)), &res); code != 200 {
		t.Fatalf("usage: %d", code)
	}
	c.card(iccid(cards[0]), res.Position)
	c.card(iccid(cards[1]), res.Position)
	port := portOf(p.embedded)
	p.Stop() // a clean stop: every partition checkpoints

	// lose partition 1's base piece
	ns := &natsServer{t: t, dir: filepath.Join(dir, "jetstream"), port: port}
	ns.start()
	nc, err := broker.Connect(ns.url(), "test", testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	objs, err := js.ObjectStore(context.Background(), broker.BucketSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	m0 := manifest(t, js, 0)
	if m0.Owner != "" || m0.Epoch == 0 || m0.Seq == 0 {
		t.Fatalf("after a clean stop partition 0's manifest is %+v: want it released, with an epoch and a sequence", m0)
	}
	if err := objs.Delete(context.Background(), manifest(t, js, 1).Base[0]); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	ns.stop()

	cfg.NATSPort = port
	if p, err = Start(context.Background(), cfg, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	c.base = p.URL
	testenv.Eventually(t, 10*time.Second, func() error {
		var raw json.RawMessage
		if code := c.do("GET", "/v1/cards/"+iccid(cards[0]), "", nil, &raw); code != 200 {
			return fmt.Errorf("partition 0's card: %d", code)
		}
		var got api.CardResponse
		if err := json.Unmarshal(raw, &got); err != nil || got.Cycle.UsageBytes != 5 {
			return fmt.Errorf("partition 0's card: %d bytes (%v)", got.Cycle.UsageBytes, err)
		}
		return nil
	})
	if m := manifest(t, p.JS, 0); m.Epoch != m0.Epoch+1 || m.Owner == "" {
		t.Fatalf("partition 0 after the restart: epoch %d owner %q; want epoch %d and an owner", m.Epoch, m.Owner, m0.Epoch+1)
	}
	var prob map[string]any
	req, _ := http.NewRequest("GET", p.URL+"/v1/cards/"+iccid(cards[1]), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a card of the partition that cannot restore: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code := c.do("GET", "/v1/cards/"+iccid(cards[1]), "", nil, &prob); prob["type"] != "cardmeter:unavailable/restoring" {
		t.Fatalf("a card of the partition that cannot restore: %d %v", code, prob)
	}
	if code := c.do("GET", "/readyz", "", nil, &prob); code != 503 || !strings.Contains(fmt.Sprint(prob["detail"]), "partition 1") {
		t.Fatalf("/readyz: %d %v", code, prob)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if code := c.do("GET", "/healthz", "", nil, &prob); code != 503 {
			return fmt.Errorf("/healthz %d with a partition that cannot restore", code)
		}
		return nil
	})
}

// manifest is partition part's checkpoint manifest.
func manifest(t *testing.T, js jetstream.JetStream, part int) projector.Manifest {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), broker.BucketCheckpoints)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), projector.ManifestKey(part))
	if err != nil {
		t.Fatal(err)
	}
	var m projector.Manifest
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Base) == 0 {
		t.Fatalf("partition %d has no base: %+v", part, m)
	}
	return m
}

// The checkpoint interval runs from when the checkpoint was stored, not
// from a restore: a projector restored from a checkpoint older than the
// interval checkpoints as soon as it has folded something, rather than a
// whole interval later. A partition that crashes again and again then
// does not fold more again at each restart.
func TestCheckpointIntervalRunsFromTheLastCheckpoint(t *testing.T) {
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI}, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Partitions: 1, ManualClock: true, ClockStart: time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	run := func(crash bool) (stop func()) {
		return startProjector(t, p, projector.Config{CheckpointInterval: time.Hour, CrashOnStop: crash})
	}
	c := &client{t: t, base: p.URL}
	post := func(id string) uint64 {
		body := fmt.Sprintf(`{"record_id":"%s","iccid":"%s","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:10:00Z","bytes_up":1,"bytes_down":1}`, id, iccid(1))
		var res api.BatchResult
		if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(body), &res); code != 200 {
			t.Fatalf("batch %s: %d %+v", id, code, res)
		}
		c.card(iccid(1), res.Position) // folded
		return res.Position
	}
	stop := run(false)
	c.putStored("/v1/plans/iot", map[string]any{"quota_bytes": 1_000_000})
	c.putStored("/v1/cards/"+iccid(1), map[string]any{"account_id": "acme", "plan_id": "iot", "carrier": "cmcc"})
	first := post("r1")
	stop() // a graceful stop: its final checkpoint is the last one
	m := manifest(t, p.JS, 0)
	if m.Seq < first {
		t.Fatalf("the final checkpoint is as of %d, before the batch at %d", m.Seq, first)
	}
	// the last checkpoint, stored two hours ago: older than the interval
	kv, err := p.JS.KeyValue(context.Background(), broker.BucketCheckpoints)
	if err != nil {
		t.Fatal(err)
	}
	m.Saved = m.Saved.Add(-2 * time.Hour)
	b, _ := json.Marshal(m)
	if _, err := kv.Put(context.Background(), projector.ManifestKey(0), b); err != nil {
		t.Fatal(err)
	}

	stop = run(true)
	defer stop()
	second := post("r2")
	// due at once (the fold's one-second tick), not an hour after the restart
	testenv.Eventually(t, 15*time.Second, func() error {
		if m := manifest(t, p.JS, 0); m.Seq < second {
			return fmt.Errorf("the checkpoint is as of %d, the batch at %d: none since the restart", m.Seq, second)
		}
		return nil
	})
}
