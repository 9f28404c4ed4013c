package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/app"
	"github.com/cardmeter/cardmeter/pkg/broker"
)

// ClusterConfig configures the cluster figures.
type ClusterConfig struct {
	Dir      string // data folders of the servers
	Cards    int
	Records  int // records per ingest round
	Rounds   int // rounds of each shape, alternating
	Kills    int // node kills for the election pause
	Batch    int // records per HTTP batch
	Workers  int
	Log      io.Writer
	Progress func(format string, args ...any)
}

// ClusterReport holds the cluster figures.
type ClusterReport struct {
	Single, Cluster []float64       // durable ingest, records/s, per round
	Pauses          []time.Duration // the longest wait for an acknowledgement around each kill
	Kills           int
	Failed          int // batches refused for good around the kills (none expected)
}

// jsNodes is a JetStream server or cluster in this process, each node
// with its own files and fixed ports, so that a killed node can come back.
type jsNodes struct {
	dir     string
	cfgs    []broker.EmbeddedConfig
	servers []*server.Server
}

func freePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// startNodes starts one server (n = 1) or a cluster of n, every node
// syncing each write before it acknowledges.
func startNodes(dir string, n int) (*jsNodes, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	ns := &jsNodes{dir: dir}
	var routes []string
	if n > 1 {
		for i := 0; i < n; i++ {
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
		}
	}
	for i := 0; i < n; i++ {
		c := broker.EmbeddedConfig{Name: fmt.Sprint("n", i), StoreDir: filepath.Join(dir, fmt.Sprint("n", i)), Port: ports[i]}
		if n > 1 {
			c.ClusterPort, c.Routes = ports[n+i], routes
		}
		ns.cfgs = append(ns.cfgs, c)
		ns.servers = append(ns.servers, nil)
		if err := ns.start(i); err != nil {
			ns.stop()
			return nil, err
		}
	}
	return ns, nil
}

func (ns *jsNodes) start(i int) error {
	s, err := broker.StartEmbedded(ns.cfgs[i], zap.NewNop())
	if err != nil {
		return err
	}
	ns.servers[i] = s
	return nil
}

func (ns *jsNodes) kill(i int) {
	ns.servers[i].Shutdown()
	ns.servers[i].WaitForShutdown()
	ns.servers[i] = nil
}

func (ns *jsNodes) stop() {
	for i, s := range ns.servers {
		if s != nil {
			ns.kill(i)
		}
	}
}

func (ns *jsNodes) urls() string {
	var us []string
	for _, c := range ns.cfgs {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", c.Port))
	}
	return strings.Join(us, ",")
}

// ingestOnly starts the API role on the nodes, with the streams at
// replicas, and provisions the cards.
func ingestOnly(ctx context.Context, ns *jsNodes, replicas int, fl *fleet, dir string) (*app.Pipeline, error) {
	nc, err := nats.Connect(ns.urls())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := broker.DefaultTopology
	topo.Replicas = replicas
	if err := waitFor(ctx, time.Minute, func() bool {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := broker.Ensure(actx, js, topo)
		return err == nil
	}); err != nil {
		return nil, fmt.Errorf("creating the streams at %d replicas: %w", replicas, err)
	}
	p, err := app.Start(ctx, app.Config{Roles: []string{app.RoleAPI}, NATSURL: ns.urls(), WaitForTopology: true, HTTPAddr: "127.0.0.1:0",
		DataDir: dir}, zap.NewNop())
	if err != nil {
		return nil, err
	}
	if err := put(p.URL+"/v1/plans/bench", `{"quota_bytes": 1099511627776, "cycle_anchor_day": 1, "time_zone": "UTC"}`); err != nil {
		p.Stop()
		return nil, err
	}
	for i, id := range fl.iccids {
		if err := put(p.URL+"/v1/cards/"+id, fmt.Sprintf(`{"account_id": %q, "plan_id": "bench", "carrier": "cmcc"}`, fl.accounts[i%len(fl.accounts)])); err != nil {
			p.Stop()
			return nil, err
		}
	}
	return p, nil
}

func put(url, body string) error {
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PUT %s: %d %s", url, resp.StatusCode, b)
	}
	return nil
}

// Cluster measures, in one run, durable ingest on one JetStream server
// (every stream at one replica) against a three-node cluster on this
// machine (three replicas), in alternating rounds; then, on the cluster
// under a steady load, kills the node that leads METER, Kills times
// (bringing it back between kills), and measures the longest wait for an
// acknowledgement around each kill: the pause while the cluster elects.
func Cluster(ctx context.Context, cfg ClusterConfig) (*ClusterReport, error) {
	rep := &ClusterReport{}
	fl := &fleet{}
	for i := 0; i < 100; i++ {
		fl.accounts = append(fl.accounts, fmt.Sprint("acct", i))
	}
	for i := 0; i < cfg.Cards; i++ {
		fl.iccids = append(fl.iccids, iccidOf(i))
	}
	bcfg := Config{BatchRecords: cfg.Batch, Cards: cfg.Cards}
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	shape := func(round, nodes int) (float64, error) {
		dir := filepath.Join(cfg.Dir, fmt.Sprintf("r%d-%dn", round, nodes))
		defer os.RemoveAll(dir) //nolint:errcheck // scratch
		ns, err := startNodes(dir, nodes)
		if err != nil {
			return 0, err
		}
		defer ns.stop()
		p, err := ingestOnly(ctx, ns, nodes, fl, filepath.Join(dir, "app"))
		if err != nil {
			return 0, err
		}
		defer p.Stop()
		// a warm-up, then the round
		if _, err := ingest(ctx, p.URL, "csv", makeBodies(fl, bcfg, "csv", cfg.Records/5, now, uint64(1000+round)), cfg.Workers, nil); err != nil {
			return 0, err
		}
		return ingest(ctx, p.URL, "csv", makeBodies(fl, bcfg, "csv", cfg.Records, now, uint64(2000+round)), cfg.Workers, nil)
	}
	for r := 0; r < cfg.Rounds; r++ {
		order := []int{1, 3}
		if r%2 == 1 {
			order = []int{3, 1}
		}
		for _, n := range order {
			rate, err := shape(r, n)
			if err != nil {
				return rep, fmt.Errorf("round %d, %d node(s): %w", r, n, err)
			}
			cfg.Progress("  round %d, %d node(s): %.0f records/s", r+1, n, rate)
			if n == 1 {
				rep.Single = append(rep.Single, rate)
			} else {
				rep.Cluster = append(rep.Cluster, rate)
			}
		}
	}
	if cfg.Kills > 0 {
		if err := pauses(ctx, cfg, fl, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// pauses runs the node kills on a three-node cluster under a steady load.
func pauses(ctx context.Context, cfg ClusterConfig, fl *fleet, rep *ClusterReport) error {
	dir := filepath.Join(cfg.Dir, "kills")
	defer os.RemoveAll(dir) //nolint:errcheck // scratch
	ns, err := startNodes(dir, 3)
	if err != nil {
		return err
	}
	defer ns.stop()
	p, err := ingestOnly(ctx, ns, 3, fl, filepath.Join(dir, "app"))
	if err != nil {
		return err
	}
	defer p.Stop()
	nc, err := nats.Connect(ns.urls())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// the load: small batches back to back on 4 workers, each retried with
	// its idempotency key until stored; every acknowledgement's time kept
	var mu sync.Mutex
	var acks []time.Time
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	bcfg := Config{BatchRecords: 50, Cards: cfg.Cards}
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; lctx.Err() == nil; b++ {
				body := makeBodies(fl, bcfg, "csv", 50, now, uint64(w*1_000_000+b))[0]
				key := fmt.Sprintf("kill-%d-%d", w, b)
				for lctx.Err() == nil {
					ok, refused := post(lctx, p.URL, key, body)
					if ok {
						mu.Lock()
						acks = append(acks, time.Now())
						mu.Unlock()
						break
					}
					if refused {
						mu.Lock()
						rep.Failed++
						mu.Unlock()
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	defer func() { stopLoad(); wg.Wait() }()
	for k := 0; k < cfg.Kills && ctx.Err() == nil; k++ {
		time.Sleep(3 * time.Second)
		leader, err := meterLeader(ctx, js)
		if err != nil {
			return err
		}
		i := -1
		for j, c := range ns.cfgs {
			if c.Name == leader {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("METER's leader %q is not a node of the cluster", leader)
		}
		killed := time.Now()
		ns.kill(i)
		// the pause: from the kill to the first acknowledgement after it,
		// or the longest gap between two around it
		if err := waitFor(ctx, time.Minute, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acks) > 0 && acks[len(acks)-1].After(killed.Add(time.Second))
		}); err != nil {
			return fmt.Errorf("kill %d: no batch acknowledged after the kill of %s: %w", k+1, leader, err)
		}
		mu.Lock()
		pause := gapAround(acks, killed)
		mu.Unlock()
		rep.Pauses = append(rep.Pauses, pause)
		rep.Kills++
		cfg.Progress("  kill %d: %s (METER's leader) killed; longest wait for an acknowledgement around it %s", k+1, leader, pause.Round(time.Millisecond))
		if err := ns.start(i); err != nil {
			return err
		}
		// back in: METER has its three replicas current again
		if err := waitFor(ctx, 2*time.Minute, func() bool { return current(ctx, js) }); err != nil {
			return fmt.Errorf("kill %d: %s never caught up: %w", k+1, leader, err)
		}
	}
	return nil
}

// gapAround is the longest time between two acknowledgements (or the kill
// and the first one after it) in the ten seconds after the kill.
func gapAround(acks []time.Time, killed time.Time) time.Duration {
	ts := append([]time.Time(nil), acks...)
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	prev := killed
	var longest time.Duration
	for _, t := range ts {
		if t.Before(killed) {
			prev = t
			continue
		}
		if t.After(killed.Add(10 * time.Second)) {
			break
		}
		longest = max(longest, t.Sub(prev))
		prev = t
	}
	return longest
}

func meterLeader(ctx context.Context, js jetstream.JetStream) (string, error) {
	st, err := js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return "", err
	}
	if c := st.CachedInfo().Cluster; c != nil && c.Leader != "" {
		return c.Leader, nil
	}
	return "", errors.New("METER has no leader")
}

// current reports whether METER's replicas are all current.
func current(ctx context.Context, js jetstream.JetStream) bool {
	st, err := js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return false
	}
	c := st.CachedInfo().Cluster
	if c == nil || c.Leader == "" || len(c.Replicas) != 2 {
		return false
	}
	for _, r := range c.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}

// post sends one batch with its key: ok when stored; refused when the
// answer is final and not a success (not to be retried).
func post(ctx context.Context, base, key string, body []byte) (ok, refused bool) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/usage?carrier=cmcc&wait=false", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "text/csv")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
		return true, false
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusGatewayTimeout || resp.StatusCode == http.StatusTooManyRequests:
		return false, false
	default:
		return false, true
	}
}

// Print writes the cluster figures as Markdown.
func (r *ClusterReport) Print(w io.Writer, cfg ClusterConfig) {
	mean := func(xs []float64) float64 {
		s := 0.0
		for _, x := range xs {
			s += x
		}
		return s / float64(max(len(xs), 1))
	}
	fmt.Fprintf(w, "| cluster figures: %d cards, %d records a round in batches of %d, %d workers | |\n|---|---|\n", cfg.Cards, cfg.Records, cfg.Batch, cfg.Workers)
	fmt.Fprintf(w, "| durable ingest, one server, streams at one replica (rounds) | %.0f records/s (%v) |\n", mean(r.Single), rounded(r.Single))
	fmt.Fprintf(w, "| durable ingest, three-node cluster on this machine, three replicas (rounds) | %.0f records/s (%v) |\n", mean(r.Cluster), rounded(r.Cluster))
	fmt.Fprintf(w, "| three nodes R3 / one node R1 | %.2f |\n", mean(r.Cluster)/mean(r.Single))
	if r.Kills > 0 {
		ps := append([]time.Duration(nil), r.Pauses...)
		sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
		fmt.Fprintf(w, "| METER's leader node killed under load, %d times: longest wait for an acknowledgement, p50 / max | %s / %s |\n",
			r.Kills, ps[len(ps)/2].Round(time.Millisecond), ps[len(ps)-1].Round(time.Millisecond))
		fmt.Fprintf(w, "| batches refused for good around the kills | %d |\n", r.Failed)
	}
}

func rounded(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x)
	}
	return out
}
