package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/event"
	"github.com/cardmeter/cardmeter/pkg/projector"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// iccid makes a valid ICCID from a number.
func iccid(n int) string {
	p := fmt.Sprintf("898600%013d", n)
	return p + string(cdr.LuhnDigit(p))
}

type client struct {
	t    *testing.T
	base string
}

// do sends a request and decodes the JSON answer into out; it returns the
// status code.
func (c *client) do(method, path, ctype string, body []byte, out any) int {
	c.t.Helper()
	return c.doKey(method, path, ctype, "", body, out)
}

// doKey is do with an Idempotency-Key, when key is not empty.
func (c *client) doKey(method, path, ctype, key string, body []byte, out any) int {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

func (c *client) putJSON(path string, v any) map[string]any {
	c.t.Helper()
	b, _ := json.Marshal(v)
	var out map[string]any
	if code := c.do("PUT", path, "application/json", b, &out); code != 200 {
		c.t.Fatalf("PUT %s: %d %v", path, code, out)
	}
	return out
}

// putStored is putJSON for a test about what is stored rather than when
// it is decided: a 202 (the decision pending on a loaded machine) is as
// good as a 200; later reads wait for the position.
func (c *client) putStored(path string, v any) map[string]any {
	c.t.Helper()
	b, _ := json.Marshal(v)
	var out map[string]any
	if code := c.do("PUT", path, "application/json", b, &out); code != 200 && code != 202 {
		c.t.Fatalf("PUT %s: %d %v", path, code, out)
	}
	return out
}

// card reads a card as a client would: a 503 (a partition restoring after
// a start) is asked again, for up to 10 s.
func (c *client) card(iccid string, minPos uint64) api.CardResponse {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var raw json.RawMessage
		code := c.do("GET", fmt.Sprintf("/v1/cards/%s?min_position=%d", iccid, minPos), "", nil, &raw)
		if code == 200 {
			var out api.CardResponse
			if err := json.Unmarshal(raw, &out); err != nil {
				c.t.Fatal(err)
			}
			return out
		}
		if code != 503 || time.Now().After(deadline) {
			c.t.Fatalf("GET card %s: %d", iccid, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runProjector starts a projector on the pipeline's connection; stop ends
// it the way a crash would (no flush, no final checkpoint).
func runProjector(t *testing.T, p *Pipeline, checkpointEvery int) (stop func()) {
	return startProjector(t, p, projector.Config{CheckpointEvery: checkpointEvery, CheckpointInterval: time.Hour, CrashOnStop: true})
}

// startProjector starts a projector on the pipeline's connection, with
// the pipeline's partitions and data folder, and waits until it is ready.
func startProjector(t *testing.T, p *Pipeline, cfg projector.Config) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	cfg.Partitions, cfg.DataDir = p.cfg.Partitions, filepath.Join(p.cfg.DataDir, "projector")
	pr := projector.New(p.NC, p.JS, cfg, testenv.Logger(t))
	done := make(chan error, 1)
	go func() { done <- pr.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, pr.Ready)
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("projector: %v", err)
		}
	}
}

// events collects every event on the EVENTS stream.
func events(t *testing.T, js jetstream.JetStream) func() []event.Envelope {
	cons, err := js.OrderedConsumer(context.Background(), broker.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got []event.Envelope
	return func() []event.Envelope {
		for {
			batch, err := cons.FetchNoWait(1000)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range batch.Messages() {
				if err := event.Validate(m.Data()); err != nil {
					t.Errorf("emitted event does not match its schema: %v\n%s", err, m.Data())
				}
				var e event.Envelope
				if err := json.Unmarshal(m.Data(), &e); err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(m.Subject(), "cardmeter.events."+e.SubjectKind()+".") {
					t.Fatalf("event %s on subject %s", e.Type, m.Subject())
				}
				got = append(got, e)
				n++
			}
			if n == 0 {
				return got
			}
		}
	}
}

func ofTypeAll(evs []event.Envelope, typ string) []event.Envelope {
	var r []event.Envelope
	for _, e := range evs {
		if e.Type == typ {
			r = append(r, e)
		}
	}
	return r
}

func ofType(evs []event.Envelope, typ, subject string) []event.Envelope {
	var r []event.Envelope
	for _, e := range evs {
		if e.Type == typ && e.Subject == subject {
			r = append(r, e)
		}
	}
	return r
}

// The walking skeleton end to end on real parts: embedded JetStream, the
// real ClickHouse, the projector killed and restarted in the middle.
func TestPipelineEndToEnd(t *testing.T) {
	ch := testenv.ClickHouse(t)
	p, err := Start(context.Background(), Config{
		Roles: []string{RoleAPI, RoleSink}, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Partitions: 4, ManualClock: true, ClickHouse: ch, ClockStart: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Sink: sinkConfigForTests(),
	}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	c := &client{t: t, base: p.URL}
	stopProjector := runProjector(t, p, 3)
	seen := events(t, p.JS)

	c.putJSON("/v1/clock", map[string]string{"now": "2026-01-10T12:00:00+08:00"})
	c.putJSON("/v1/plans/iot-1m", map[string]any{"quota_bytes": 1_000_000, "time_zone": "Asia/Shanghai"})
	a, b := iccid(1), iccid(2)
	c.putJSON("/v1/cards/"+a, map[string]any{"account_id": "acme", "plan_id": "iot-1m", "carrier": "cmcc", "auto_stop_over_quota": true})
	c.putJSON("/v1/cards/"+b, map[string]any{"account_id": "globex", "plan_id": "iot-1m", "carrier": "cmcc"})

	// A batch with good records and bad ones: the bad are named, the good kept.
	badCheck := a[:len(a)-1] + string('0'+(a[len(a)-1]-'0'+1)%10)
	csv := "record_id,iccid,start_time,end_time,bytes_up,bytes_down\n" +
		"r1," + a + ",2026-01-10T08:00:00+08:00,2026-01-10T08:10:00+08:00,100000,500000\n" +
		"r2," + b + ",2026-01-10T08:00:00+08:00,2026-01-10T08:10:00+08:00,10,20\n" +
		"bad1," + badCheck + ",2026-01-10T08:00:00+08:00,2026-01-10T08:10:00+08:00,1,1\n" +
		"bad2," + a + ",2026-01-10T08:00:00+08:00,2026-01-10T08:10:00+08:00,-5,1\n" +
		"bad3," + a + ",2026-01-10T09:00:00+08:00,2026-01-10T08:10:00+08:00,1,1\n"
	var res struct {
		api.BatchResult
		Status int    `json:"status"`
		Type   string `json:"type"`
	}
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "text/csv", []byte(csv), &res); code != 422 {
		t.Fatalf("mixed batch: status %d, want 422", code)
	}
	if res.Accepted == nil || *res.Accepted != 2 || len(res.Rejected) != 3 || res.Type != "cardmeter:invalid/records" {
		t.Fatalf("mixed batch result: %+v", res)
	}
	wantErr := map[string]string{"bad1": "iccid", "bad2": "bytes_up", "bad3": "end_time"}
	for _, e := range res.Rejected {
		if wantErr[e.RecordID] != e.Field || e.Line < 4 || e.Reason == "" {
			t.Errorf("rejection %+v: want field %q", e, wantErr[e.RecordID])
		}
	}
	if got := c.card(a, res.Position); got.Cycle.UsageBytes != 600000 || got.Status != "in_service" {
		t.Fatalf("after batch 1: %+v", got)
	}

	// Crash the projector, push more while it is down (stored; the answer
	// says the verdicts are pending), restart it.
	stopProjector()
	ndjson := fmt.Sprintf(`{"record_id":"r3","iccid":"%s","start_time":"2026-01-10T09:00:00+08:00","end_time":"2026-01-10T09:30:00+08:00","bytes_up":100000,"bytes_down":350000}
{"record_id":"r4","iccid":"%s","start_time":"2026-01-10T10:00:00+08:00","end_time":"2026-01-10T10:30:00+08:00","bytes_up":1000,"bytes_down":1000}
`, a, a)
	var res2 api.BatchResult
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(ndjson), &res2); code != 200 || res2.Stored != 2 || res2.Verdicts != "pending" || res2.Accepted != nil {
		t.Fatalf("batch 2: %d %+v", code, res2)
	}
	// the same batch again (a carrier's retry) gets the same answer and adds nothing
	var res3 api.BatchResult
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(ndjson), &res3); code != 200 || fmt.Sprint(res3) != fmt.Sprint(res2) {
		t.Fatalf("retried batch 2: %d %+v, first answer %+v", code, res3, res2)
	}
	// This run snapshots nothing: it folds batch 2, emits the stop, then
	// crashes; the next run replays batch 2 from the older snapshot.
	stopProjector = runProjector(t, p, 1<<30)
	if got := c.card(a, res3.Position); got.Status != "stopped" {
		t.Fatalf("card a after batch 2: %+v", got)
	}
	stopProjector()
	stopProjector = runProjector(t, p, 3)
	defer func() { stopProjector() }()

	got := c.card(a, res3.Position)
	if got.Status != "stopped" || len(got.StopReasons) != 1 || got.StopReasons[0] != "over_quota" {
		t.Fatalf("card a after crossing the quota: %+v", got)
	}
	if got.Cycle.UsageBytes != 1_052_000 || got.Cycle.OvershootBytes != 52_000 || got.Cycle.QuotaBytes != 1_000_000 {
		t.Fatalf("usage after a projector crash: %+v (want 1052000 counted once)", got.Cycle)
	}
	if got := c.card(b, res3.Position); got.Status != "in_service" || got.Cycle.UsageBytes != 30 {
		t.Fatalf("card b: %+v", got)
	}

	stopped := ofType(seen(), "cardmeter.card.stopped.v1", a)
	if len(stopped) != 1 {
		t.Fatalf("stopped events for a: %d, want exactly 1 after the crash and replay", len(stopped))
	}
	if d := stopped[0].Data; d.Reason != "over_quota" || d.Cause != "record:cmcc/r3" || *d.OvershootBytes != 50_000 {
		t.Fatalf("stopped event: %+v", d)
	}

	// ClickHouse holds every accepted record once, with the right sums.
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 20*time.Second, func() error {
		rows, err := conn.Query(context.Background(), "SELECT iccid, count(), sum(bytes_up + bytes_down) FROM usage_records GROUP BY iccid ORDER BY iccid")
		if err != nil {
			return err
		}
		defer rows.Close()
		got := map[string][2]uint64{}
		for rows.Next() {
			var id string
			var n, sum uint64
			if err := rows.Scan(&id, &n, &sum); err != nil {
				return err
			}
			got[id] = [2]uint64{n, sum}
		}
		want := map[string][2]uint64{a: {3, 1_052_000}, b: {1, 30}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("usage in ClickHouse %v, want %v", got, want)
		}
		return nil
	})

	// Into the next cycle: the over-quota stop clears.
	var clk map[string]any
	b2, _ := json.Marshal(map[string]string{"now": "2026-02-01T00:00:00+08:00"})
	if code := c.do("PUT", "/v1/clock", "application/json", b2, &clk); code != 200 {
		t.Fatalf("clock: %d %v", code, clk)
	}
	got = c.card(a, uint64(clk["position"].(float64)))
	if got.Status != "in_service" || got.Cycle.UsageBytes != 0 || got.Cycle.Start != "2026-01-31T16:00:00Z" {
		t.Fatalf("card a in the next cycle: %+v", got)
	}
	if r := ofType(seen(), "cardmeter.card.resumed.v1", a); len(r) != 1 || r[0].Data.Reason != "over_quota" {
		t.Fatalf("resumed events: %+v", r)
	}
	// /readyz reports the consumers' backlog; /metrics the projector's lag
	var rd map[string]any
	if code := c.do("GET", "/readyz", "", nil, &rd); code != 200 || rd["status"] != "ready" {
		t.Fatalf("readyz: %d %v", code, rd)
	}
	if _, ok := rd["sink_pending_messages"]; !ok {
		t.Fatalf("readyz says nothing of the sink's backlog: %v", rd)
	}
	// the clock never moves back
	b3, _ := json.Marshal(map[string]string{"now": "2026-01-01T00:00:00+08:00"})
	if code := c.do("PUT", "/v1/clock", "application/json", b3, nil); code != 409 {
		t.Fatalf("clock moved back: %d", code)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		var n uint64
		row := conn.QueryRow(context.Background(), "SELECT count() FROM card_events WHERE iccid = ? AND type IN ('cardmeter.card.stopped.v1', 'cardmeter.card.resumed.v1')", a)
		if err := row.Scan(&n); err != nil {
			return err
		}
		if n != 2 {
			return fmt.Errorf("%d stop/resume rows in card_events, want 2", n)
		}
		return nil
	})
}
