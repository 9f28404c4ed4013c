package app

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// The services run as separate processes against an external JetStream
// server, as in docker-compose: the API in one, the projector in another,
// the sink in a third.
func TestServicesAgainstExternalNATS(t *testing.T) {
	srv, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	ch := testenv.ClickHouse(t)
	start := func(roles ...string) *Pipeline {
		p, err := Start(context.Background(), Config{Roles: roles, NATSURL: srv.ClientURL(), HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
			Partitions: 3, ManualClock: true, ClockStart: time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC), ClickHouse: ch,
			Sink: sinkConfigForTests()}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		return p
	}
	apiProc := start(RoleAPI)
	proj := start(RoleProjector)
	start(RoleSink)
	testenv.Eventually(t, 10*time.Second, proj.Projector.Ready)

	c := &client{t: t, base: apiProc.URL}
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
