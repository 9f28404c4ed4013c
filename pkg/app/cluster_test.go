package app

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// jsCluster starts three JetStream servers in this process, routed to each
// other on loopback, and waits until they have a meta leader.
func jsCluster(t *testing.T) ([]*server.Server, []string) {
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var servers []*server.Server
	var urls []string
	for i, p := range ports {
		s, err := broker.StartEmbedded(broker.EmbeddedConfig{Name: fmt.Sprint("n", i), StoreDir: t.TempDir(), Port: -1,
			ClusterPort: p, Routes: routes}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		servers = append(servers, s)
		urls = append(urls, s.ClientURL())
	}
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	testenv.Eventually(t, 30*time.Second, func() error {
		_, err := js.AccountInfo(context.Background())
		return err
	})
	return servers, urls
}

// A three-node JetStream cluster with every stream and bucket at three
// replicas: a node killed under load loses nothing, nor then a projector
// and a sink of two each. The roles run on connections to different
// nodes; every record acknowledged is counted once in card state and in
// ClickHouse.
func TestClusterNodeLossLosesNothing(t *testing.T) {
	servers, urls := jsCluster(t)
	all := strings.Join(urls, ",")
	nc, err := nats.Connect(all)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := broker.Topology{Partitions: 4, Replicas: 3, DuplicateWindow: time.Hour, EventsMaxAge: time.Hour, LeaseTTL: 3 * time.Second}
	testenv.Eventually(t, 30*time.Second, func() error {
		_, err := broker.Ensure(context.Background(), js, topo)
		return err
	})
	if info, err := js.Stream(context.Background(), broker.StreamMeter); err != nil || info.CachedInfo().Config.Replicas != 3 {
		t.Fatalf("METER: %v", err)
	}
	ch := testenv.ClickHouse(t)
	start := func(url string, roles ...string) *Pipeline {
		// each role prefers one node and fails over to the others
		p, err := Start(context.Background(), Config{Roles: roles, NATSURL: url + "," + all, WaitForTopology: true, HTTPAddr: "127.0.0.1:0",
			DataDir: t.TempDir(), ManualClock: true, ClockStart: time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC), ClickHouse: ch,
			Sink: sinkConfigForTests()}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		return p
	}
	apiProc := start(urls[0], RoleAPI, RoleClock)
	a := start(urls[1], RoleProjector)
	b := start(urls[2], RoleProjector)
	sa := start(urls[0], RoleSink)
	sb := start(urls[2], RoleSink)
	testenv.Eventually(t, 30*time.Second, func() error {
		if len(a.Projector.Held())+len(b.Projector.Held()) != 4 {
			return fmt.Errorf("a holds %v, b %v", a.Projector.Held(), b.Projector.Held())
		}
		if ha, hb := sa.Sink.Held(), sb.Sink.Held(); len(ha)+len(hb) != 5 || len(ha) == 0 || len(hb) == 0 {
			return fmt.Errorf("sink a holds %v, sink b %v", ha, hb)
		}
		if err := a.Projector.Ready(); err != nil {
			return err
		}
		return b.Projector.Ready()
	})
	cl := &client{t: t, base: apiProc.URL}
	cl.putStored("/v1/plans/p", map[string]any{"quota_bytes": 1 << 40, "cycle_anchor_day": 1, "time_zone": "UTC"})
	const cards = 16
	var last uint64
	for i := 0; i < cards; i++ {
		out := cl.putStored("/v1/cards/"+iccid(700+i), map[string]any{"account_id": fmt.Sprint("acct", i%8), "plan_id": "p", "carrier": "cmcc"})
		last = uint64(out["position"].(float64))
	}
	var want uint64
	round := func(r int) {
		var body strings.Builder
		for i := 0; i < cards; i++ {
			fmt.Fprintf(&body, `{"record_id":"c%d-%d","iccid":"%s","start_time":"2026-03-04T00:00:00Z","end_time":"2026-03-04T00:01:00Z","bytes_up":50,"bytes_down":0}`+"\n", r, i, iccid(700+i))
		}
		// while the cluster elects new leaders a batch may be refused
		// (503); a client sends it again with the same key, and what was
		// stored is stored once
		deadline := time.Now().Add(30 * time.Second)
		for {
			var res api.BatchResult
			code := cl.doKey("POST", "/v1/usage?carrier=cmcc&wait=false", "application/x-ndjson", fmt.Sprint("round-", r), []byte(body.String()), &res)
			if code == 200 && res.Stored == cards {
				want += 50
				last = max(last, res.Position)
				return
			}
			if code != 503 || time.Now().After(deadline) {
				t.Fatalf("round %d: %d %+v", r, code, res)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for r := 0; r < 5; r++ {
		round(r)
	}
	// the node a projector and the sink's peers talk to goes away
	servers[1].Shutdown()
	killed := time.Now()
	for r := 5; r < 10; r++ {
		round(r)
	}
	// then projector b and sink b crash: connections cut, nothing handed back
	b.NC.Close()
	sb.NC.Close()
	go b.Stop()
	go sb.Stop()
	for r := 10; r < 15; r++ {
		round(r)
	}
	t.Logf("15 rounds stored, the last 10 after a node was killed (%s)", time.Since(killed).Round(time.Millisecond))
	testenv.Eventually(t, 60*time.Second, func() error {
		if h := a.Projector.Held(); len(h) != 4 {
			return fmt.Errorf("projector a holds %v", h)
		}
		if h := sa.Sink.Held(); len(h) != 5 {
			return fmt.Errorf("sink a holds %v", h)
		}
		return a.Projector.Ready()
	})
	for i := 0; i < cards; i++ {
		got := cl.card(iccid(700+i), last)
		if got.Cycle.UsageBytes != want {
			t.Errorf("card %d: %d bytes counted, %d stored", i, got.Cycle.UsageBytes, want)
		}
	}
	conn := testenv.ClickHouseConn(t, ch)
	testenv.Eventually(t, 60*time.Second, func() error {
		var n, distinct, bytes, rolled uint64
		if err := conn.QueryRow(context.Background(), "SELECT count(), uniqExact(partition, src_seq, idx), sum(bytes_up) FROM usage_records").Scan(&n, &distinct, &bytes); err != nil {
			return err
		}
		if err := conn.QueryRow(context.Background(), "SELECT sum(bytes_up) FROM usage_daily_card").Scan(&rolled); err != nil {
			return err
		}
		if n != 15*cards || distinct != n || bytes != want*cards || rolled != bytes {
			return fmt.Errorf("ClickHouse holds %d records (%d distinct) of %d bytes, rolled up %d; want %d of %d", n, distinct, bytes, rolled, 15*cards, want*cards)
		}
		return nil
	})
}

// A new log with three replicas gets the cluster's partition count, one
// with a single replica the single node's; either is the log's from then on.
func TestNewClusterLogGetsClusterPartitions(t *testing.T) {
	_, urls := jsCluster(t)
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	topo := broker.DefaultTopology
	topo.Partitions, topo.Replicas = 0, 3
	var got broker.Topology
	testenv.Eventually(t, 30*time.Second, func() (err error) {
		got, err = broker.Ensure(ctx, js, topo)
		return err
	})
	if got.Partitions != broker.ClusterPartitions || got.Replicas != 3 {
		t.Fatalf("a new log at 3 replicas: %d partitions, %d replicas; want %d and 3", got.Partitions, got.Replicas, broker.ClusterPartitions)
	}
	topo.Replicas = 0 // a role started with defaults keeps the log's
	if got, err := broker.Ensure(ctx, js, topo); err != nil || got.Partitions != broker.ClusterPartitions || got.Replicas != 3 {
		t.Fatalf("again with defaults: %+v, %v", got, err)
	}
}
