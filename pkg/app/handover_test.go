package app

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// cluster is a NATS server the roles share as separate processes would,
// each as its own user, with the topology set up by the admin.
type cluster struct {
	t    *testing.T
	srv  interface{ ClientURL() string }
	pass map[string]string
	cfg  Config // what every process shares
}

func newCluster(t *testing.T, topo broker.Topology) *cluster {
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
	c := &cluster{t: t, srv: srv, pass: pass, cfg: Config{NATSURL: srv.ClientURL(), WaitForTopology: true, HTTPAddr: "127.0.0.1:0",
		ManualClock: true, ClockStart: time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC), ClickHouse: ch, Sink: sinkConfigForTests()}}
	_, js := c.connect(broker.UserAdmin)
	if _, err := broker.Ensure(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) connect(user string) (*nats.Conn, jetstream.JetStream) {
	nc, err := nats.Connect(c.cfg.NATSURL, nats.UserInfo(user, c.pass[user]), nats.CustomInboxPrefix(broker.InboxPrefix(user)))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return nc, js
}

// start runs roles as user, in a data folder of their own.
func (c *cluster) start(user string, roles ...string) *Pipeline {
	cfg := c.cfg
	cfg.Roles, cfg.NATS, cfg.DataDir = roles, NATSAuth{User: user, Password: c.pass[user]}, c.t.TempDir()
	p, err := Start(context.Background(), cfg, testenv.Logger(c.t))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(p.Stop)
	return p
}

func held(p *Pipeline) []int { return p.Projector.Held() }

// Two projectors share the partitions, and two sinks the sink's units;
// one of each crashes under load (its connection cut, no final checkpoint
// or position, no lease released) and the other takes its partitions once
// their leases lapse. Every accepted record is counted once, in card state
// and in ClickHouse (rows and rollups), and each card that crossed its
// quota was stopped once.
func TestProjectorsShareAndHandOver(t *testing.T) {
	c := newCluster(t, broker.Topology{Partitions: 4, Replicas: 1, DuplicateWindow: time.Hour, EventsMaxAge: time.Hour, LeaseTTL: 2 * time.Second})
	apiProc := c.start(broker.RoleIngest, RoleAPI)
	c.start(broker.RoleClock, RoleClock)
	a := c.start(broker.RoleProjector, RoleProjector)
	b := c.start(broker.RoleProjector, RoleProjector)
	sa := c.start(broker.RoleSink, RoleSink)
	sb := c.start(broker.RoleSink, RoleSink)
	testenv.Eventually(t, 20*time.Second, func() error {
		if ha, hb := held(a), held(b); len(ha) != 2 || len(hb) != 2 {
			return fmt.Errorf("a holds %v, b %v: want two each", ha, hb)
		}
		// five units (four partitions' usage and the events): three and two
		if ha, hb := sa.Sink.Held(), sb.Sink.Held(); len(ha)+len(hb) != 5 || len(ha) < 2 || len(hb) < 2 {
			return fmt.Errorf("sink a holds %v, sink b %v: want them shared", ha, hb)
		}
		if err := a.Projector.Ready(); err != nil {
			return err
		}
		return b.Projector.Ready()
	})
	cl := &client{t: t, base: apiProc.URL}
	cl.putStored("/v1/plans/p", map[string]any{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"})
	const cards = 24
	var last uint64
	for i := 0; i < cards; i++ {
		out := cl.putStored("/v1/cards/"+iccid(500+i), map[string]any{"account_id": fmt.Sprint("acct", i%8), "plan_id": "p", "carrier": "cmcc", "auto_stop_over_quota": true})
		last = uint64(out["position"].(float64))
	}
	onB := map[int]bool{}
	for _, p := range held(b) {
		onB[p] = true
	}
	ledger := make([]uint64, cards)
	round := func(r int) {
		var body strings.Builder
		for i := 0; i < cards; i++ {
			fmt.Fprintf(&body, `{"record_id":"r%d-%d","iccid":"%s","start_time":"2026-03-04T00:00:00Z","end_time":"2026-03-04T00:01:00Z","bytes_up":%d,"bytes_down":0}`+"\n", r, i, iccid(500+i), 60+i)
		}
		var res api.BatchResult
		code := cl.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(body.String()), &res)
		// while a partition has no owner the verdicts are pending: the
		// records are stored all the same
		if code != 200 || res.Stored != cards {
			t.Fatalf("round %d: %d %+v", r, code, res)
		}
		for i := range ledger {
			ledger[i] += uint64(60 + i)
		}
		last = max(last, res.Position)
	}
	for r := 0; r < 8; r++ {
		round(r)
	}
	// b and sink b crash: their connections are cut first, so nothing of
	// them gets out (no final checkpoint or position, no lease given
	// back), then they end
	sinkB := sb.Sink.Held()
	b.NC.Close()
	sb.NC.Close()
	var stopped sync.WaitGroup
	stopped.Add(2)
	go func() { defer stopped.Done(); b.Stop() }()
	go func() { defer stopped.Done(); sb.Stop() }()
	crashed := time.Now()
	for r := 8; r < 24; r++ { // records keep coming for b's partitions while nobody folds them
		round(r)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if h := held(a); len(h) != 4 {
			return fmt.Errorf("a holds %v", h)
		}
		if h := sa.Sink.Held(); len(h) != 5 {
			return fmt.Errorf("sink a holds %v", h)
		}
		return a.Projector.Ready()
	})
	t.Logf("b's partitions %v folded again by a %s after the crash", onB, time.Since(crashed).Round(time.Millisecond))
	for i := 0; i < cards; i++ {
		got := cl.card(iccid(500+i), last)
		if got.Cycle.UsageBytes != ledger[i] {
			t.Errorf("card %d: usage %d, the accepted records sum to %d", i, got.Cycle.UsageBytes, ledger[i])
		}
		if got.Status != "stopped" {
			t.Errorf("card %d: %s at %d bytes of 1000", i, got.Status, got.Cycle.UsageBytes)
		}
	}
	// one stopped event per card, whichever projector emitted it
	_, js := c.connect(broker.UserAdmin)
	stoppedBy := map[string]int{}
	for _, e := range events(t, js)() {
		if e.Type == "cardmeter.card.stopped.v1" {
			stoppedBy[e.Subject]++
		}
	}
	for i := 0; i < cards; i++ {
		if n := stoppedBy[iccid(500+i)]; n != 1 {
			t.Errorf("card %d: %d stopped events", i, n)
		}
	}
	if len(onB) != 2 {
		t.Errorf("b held %v before the crash", onB)
	}
	// ClickHouse: every row once, each card's sum and rollup its ledger,
	// one stopped row per card
	conn := testenv.ClickHouseConn(t, c.cfg.ClickHouse)
	testenv.Eventually(t, 30*time.Second, func() error {
		var n, distinct uint64
		if err := conn.QueryRow(context.Background(), "SELECT count(), uniqExact(partition, src_seq, idx) FROM usage_records").Scan(&n, &distinct); err != nil {
			return err
		}
		if n != 24*cards || distinct != n {
			return fmt.Errorf("%d usage rows (%d distinct), want %d once each", n, distinct, 24*cards)
		}
		return nil
	})
	// an insert writes the table, then the views: a read between the two
	// sees rows whose rollups are still coming
	testenv.Eventually(t, 30*time.Second, func() error {
		for i := 0; i < cards; i++ {
			var rows, rolled uint64
			if err := conn.QueryRow(context.Background(), "SELECT sum(bytes_up + bytes_down) FROM usage_records WHERE iccid = ?", iccid(500+i)).Scan(&rows); err != nil {
				return err
			}
			if err := conn.QueryRow(context.Background(), "SELECT sum(bytes_up + bytes_down) FROM usage_daily_card WHERE iccid = ?", iccid(500+i)).Scan(&rolled); err != nil {
				return err
			}
			if rows != ledger[i] || rolled != ledger[i] {
				return fmt.Errorf("card %d in ClickHouse: rows sum to %d, the daily rollup to %d; the ledger %d", i, rows, rolled, ledger[i])
			}
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		var n, cardsStopped uint64
		if err := conn.QueryRow(context.Background(), "SELECT count(), uniqExact(iccid) FROM card_events WHERE type = 'cardmeter.card.stopped.v1'").Scan(&n, &cardsStopped); err != nil {
			return err
		}
		if n != cards || cardsStopped != cards {
			return fmt.Errorf("%d stopped rows for %d cards, want one for each of %d", n, cardsStopped, cards)
		}
		return nil
	})
	t.Logf("sink b held %v before the crash", sinkB)
	stopped.Wait()
}
