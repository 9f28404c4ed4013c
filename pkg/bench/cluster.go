package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/app"
	"github.com/cardmeter/cardmeter/pkg/broker"
)

// ClusterConfig configures the cluster figures.
type ClusterConfig struct {
	NATSServer string // the nats-server binary (NATSServer makes one)
	Dir        string // data folders of the servers
	Cards      int
	Records    int // records per ingest round
	Rounds     int // rounds of each shape, alternating
	Kills      int // node kills for the election pause
	Batch      int // records per HTTP batch
	Workers    int
	Log        io.Writer
	Progress   func(format string, args ...any)
}

// ClusterReport holds the cluster figures.
type ClusterReport struct {
	Single, Cluster []float64       // durable ingest, records/s, per round
	Pauses          []time.Duration // the longest wait for an acknowledgement around each kill
	Kills           int
	Failed          int // batches refused for good around the kills (none expected)
}

// jsNodes is a JetStream server or cluster of nats-server processes on
// this machine, each node with its own files and fixed ports, so that a
// node killed (SIGKILL) can come back.
type jsNodes struct {
	bin   string
	dir   string
	ports []int // client ports
	confs []string
	procs []*exec.Cmd
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

// NATSServer returns a nats-server binary: path if set, else the module
// this build pins, installed with `go install` into dir.
func NATSServer(ctx context.Context, path, dir string) (string, error) {
	if path != "" {
		return path, nil
	}
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/nats-io/nats-server/v2" {
				version = d.Version
			}
		}
	}
	if version == "" {
		return "", errors.New("no nats-server version in this build: pass -nats-server")
	}
	bin := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/nats-io/nats-server/v2@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install nats-server %s: %w\n%s", version, err, out)
	}
	return filepath.Join(bin, "nats-server"), nil
}

// startNodes starts one server (n = 1) or a cluster of n, every node
// syncing each write before it acknowledges.
func startNodes(bin, dir string, n int) (*jsNodes, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	ns := &jsNodes{bin: bin, dir: dir, ports: ports[:n]}
	var routes []string
	for i := 0; i < n; i++ {
		routes = append(routes, fmt.Sprintf("\"nats-route://127.0.0.1:%d\"", ports[n+i]))
	}
	for i := 0; i < n; i++ {
		store := filepath.Join(dir, fmt.Sprint("n", i))
		if err := os.MkdirAll(store, 0o755); err != nil {
			return nil, err
		}
		conf := fmt.Sprintf("server_name: n%d\nlisten: 127.0.0.1:%d\nmax_payload: 8MB\njetstream { store_dir: %q, sync_interval: always }\n", i, ports[i], store)
		if n > 1 {
			conf += fmt.Sprintf("cluster { name: bench, listen: 127.0.0.1:%d, routes: [%s] }\n", ports[n+i], strings.Join(routes, ", "))
		}
		path := filepath.Join(dir, fmt.Sprintf("n%d.conf", i))
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			return nil, err
		}
		ns.confs = append(ns.confs, path)
		ns.procs = append(ns.procs, nil)
		if err := ns.start(i); err != nil {
			ns.stop()
			return nil, err
		}
	}
	return ns, nil
}

func (ns *jsNodes) start(i int) error {
	cmd := exec.Command(ns.bin, "-c", ns.confs[i])
	logf, err := os.Create(filepath.Join(ns.dir, fmt.Sprintf("n%d.log", i)))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	ns.procs[i] = cmd
	return waitFor(context.Background(), 30*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ns.ports[i]))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// kill ends node i at once (SIGKILL): no goodbye to its peers.
func (ns *jsNodes) kill(i int) {
	_ = ns.procs[i].Process.Kill()
	_ = ns.procs[i].Wait()
	ns.procs[i] = nil
}

func (ns *jsNodes) stop() {
	for i, p := range ns.procs {
		if p != nil {
			_ = p.Process.Signal(os.Interrupt)
			_ = p.Wait()
			ns.procs[i] = nil
		}
	}
}

func (ns *jsNodes) urls() string {
	var us []string
	for _, p := range ns.ports {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	return strings.Join(us, ",")
}

// ingestOnly writes the fleet into the log and the directory, with the
// streams at replicas, and starts the API role on the nodes.
func ingestOnly(ctx context.Context, ns *jsNodes, replicas int, cfg Config, dir string) (*app.Pipeline, *fleet, error) {
	nc, err := nats.Connect(ns.urls())
	if err != nil {
		return nil, nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, nil, err
	}
	topo := broker.DefaultTopology
	topo.Replicas = replicas
	if err := waitFor(ctx, time.Minute, func() bool {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		t, err := broker.Ensure(actx, js, topo)
		topo = t
		return err == nil
	}); err != nil {
		return nil, nil, fmt.Errorf("creating the streams at %d replicas: %w", replicas, err)
	}
	fl, err := writeFleet(ctx, js, topo, cfg)
	if err != nil {
		return nil, nil, err
	}
	p, err := app.Start(ctx, app.Config{Roles: []string{app.RoleAPI}, NATSURL: ns.urls(), WaitForTopology: true, HTTPAddr: "127.0.0.1:0",
		DataDir: dir}, zap.NewNop())
	if err != nil {
		return nil, nil, err
	}
	// the API loads the directory at start: the last card is known
	if err := waitFor(ctx, time.Minute, func() bool {
		ok, _ := post(ctx, p.URL, "probe", []byte("record_id,iccid,start_time,end_time,bytes_up,bytes_down\nprobe,"+fl.iccids[len(fl.iccids)-1]+",2026-03-09T00:00:00Z,2026-03-09T00:01:00Z,1,1\n"))
		return ok
	}); err != nil {
		p.Stop()
		return nil, nil, fmt.Errorf("the API does not know the fleet: %w", err)
	}
	return p, fl, nil
}

// Cluster measures, in one run, durable ingest on one JetStream server
// (every stream at one replica) against a three-node cluster on this
// machine (three replicas), in alternating rounds; then, on the cluster
// under a steady load, kills the node that leads METER, Kills times
// (bringing it back between kills), and measures the longest wait for an
// acknowledgement around each kill: the pause while the cluster elects.
func Cluster(ctx context.Context, cfg ClusterConfig) (*ClusterReport, error) {
	rep := &ClusterReport{}
	bcfg := Config{BatchRecords: cfg.Batch, Cards: cfg.Cards, Accounts: 100}
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	shape := func(round, nodes int) (float64, error) {
		dir := filepath.Join(cfg.Dir, fmt.Sprintf("r%d-%dn", round, nodes))
		defer os.RemoveAll(dir) //nolint:errcheck // scratch
		ns, err := startNodes(cfg.NATSServer, dir, nodes)
		if err != nil {
			return 0, err
		}
		defer ns.stop()
		p, fl, err := ingestOnly(ctx, ns, nodes, bcfg, filepath.Join(dir, "app"))
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
		if err := pauses(ctx, cfg, bcfg, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// pauses runs the node kills on a three-node cluster under a steady load.
func pauses(ctx context.Context, cfg ClusterConfig, bcfg Config, rep *ClusterReport) error {
	dir := filepath.Join(cfg.Dir, "kills")
	defer os.RemoveAll(dir) //nolint:errcheck // scratch
	ns, err := startNodes(cfg.NATSServer, dir, 3)
	if err != nil {
		return err
	}
	defer ns.stop()
	p, fl, err := ingestOnly(ctx, ns, 3, bcfg, filepath.Join(dir, "app"))
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
	small := bcfg
	small.BatchRecords = 50
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; lctx.Err() == nil; b++ {
				body := makeBodies(fl, small, "csv", 50, now, uint64(w*1_000_000+b))[0]
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
		for j := range ns.procs {
			if leader == fmt.Sprint("n", j) {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("METER's leader %q is not a node of the cluster", leader)
		}
		killed := time.Now()
		ns.kill(i)
		// the pause: the longest gap between two acknowledgements from the
		// last before the kill to the window's end
		if err := waitFor(ctx, 2*time.Minute, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acks) > 0 && acks[len(acks)-1].After(killed.Add(pauseWindow))
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

// pauseWindow is how long after a kill the acknowledgements are looked at.
const pauseWindow = 15 * time.Second

// gapAround is the longest time between two acknowledgements, from the
// last one before the kill to the first one past the window after it.
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
		longest = max(longest, t.Sub(prev))
		prev = t
		if t.After(killed.Add(pauseWindow)) {
			break
		}
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
