package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/lease"
)

// pair is two projectors sharing a log's partitions, as two machines
// would: A, the all-in-one (embedded NATS, API, clock, sink and a
// projector), and B, a projector process on A's NATS as the admin user.
type pair struct {
	a, b       *node
	api, bHTTP string // A's API, B's health and metrics
	natsURL    string
	admin      string // the NATS admin's password
	partitions int
	ids        []string // the cards
	want       uint64   // bytes sent to each card, all acknowledged
	mu         sync.Mutex
	lastPos    uint64
	round      int
	tiny       int                  // cards on the tiny plan so far
	stopped    map[string]time.Time // when each card's stopped event came
}

// PairConfig configures a pair.
type PairConfig struct {
	Binary, ProjectorBinary string // the all-in-one and the projector service
	Dir                     string // data folders and logs
	ClickHouseAddr          string
	ClickHouseDB            string
	Partitions              int
	LeaseTTL                time.Duration
	Cards                   int
	Log                     *zap.Logger
}

// startPair starts A, then B, and waits until each holds half the
// partitions and is ready; then it provisions the cards.
func startPair(ctx context.Context, cfg PairConfig) (*pair, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	admin := broker.NewPassword()
	p := &pair{api: fmt.Sprintf("http://127.0.0.1:%d", ports[1]), bHTTP: fmt.Sprintf("http://127.0.0.1:%d", ports[2]), partitions: cfg.Partitions,
		natsURL: fmt.Sprintf("nats://127.0.0.1:%d", ports[0]), admin: admin, stopped: map[string]time.Time{}}
	p.a = &node{bin: cfg.Binary, logPath: filepath.Join(cfg.Dir, "a.log"), log: cfg.Log, args: []string{"run",
		"--data-dir", filepath.Join(cfg.Dir, "a"), "--http-addr", "127.0.0.1:" + strconv.Itoa(ports[1]), "--nats-port", strconv.Itoa(ports[0]),
		"--clickhouse-addr", cfg.ClickHouseAddr, "--clickhouse-db", cfg.ClickHouseDB, "--partitions", strconv.Itoa(cfg.Partitions),
		"--lease-ttl", cfg.LeaseTTL.String(), "--clock", "manual", "--clock-start", "2026-06-20T12:00:00Z"},
		env: []string{"CARDMETER_NATS_ADMIN_PASSWORD=" + admin}}
	p.b = &node{bin: cfg.ProjectorBinary, logPath: filepath.Join(cfg.Dir, "b.log"), log: cfg.Log, args: []string{
		"--data-dir", filepath.Join(cfg.Dir, "b"), "--health-addr", "127.0.0.1:" + strconv.Itoa(ports[2]),
		"--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", ports[0]), "--wait-for-topology"},
		env: []string{"CARDMETER_NATS_USER=" + broker.UserAdmin, "CARDMETER_NATS_PASSWORD=" + admin}}
	if err := p.a.start(); err != nil {
		return p, err
	}
	if err := until(ctx, time.Minute, func() error { return ready(p.api) }); err != nil {
		return p, err
	}
	if err := p.b.start(); err != nil {
		return p, err
	}
	if err := p.spread(ctx, time.Minute); err != nil {
		return p, err
	}
	if err := send(http.MethodPut, p.api+"/v1/plans/p", `{"quota_bytes": 1000000000000, "cycle_anchor_day": 1, "time_zone": "UTC"}`); err != nil {
		return p, err
	}
	if err := send(http.MethodPut, p.api+"/v1/plans/tiny", `{"quota_bytes": 1000, "cycle_anchor_day": 1, "time_zone": "UTC"}`); err != nil {
		return p, err
	}
	for i := 0; i < cfg.Cards; i++ {
		pre := fmt.Sprintf("898600%013d", 900+i)
		id := pre + string(cdr.LuhnDigit(pre))
		p.ids = append(p.ids, id)
		if err := send(http.MethodPut, p.api+"/v1/cards/"+id, fmt.Sprintf(`{"account_id": "acct%d", "plan_id": "p", "carrier": "cmcc"}`, i)); err != nil {
			return p, err
		}
	}
	return p, nil
}

// stop ends both processes.
func (p *pair) stop() {
	for _, n := range []*node{p.b, p.a} {
		if n != nil && n.running() {
			n.signal(syscall.SIGCONT)
			n.kill()
		}
	}
}

// held is how many partitions the instance at base holds.
func held(base string) (int, error) {
	v, err := metric(base, "cardmeter_projector_partitions_held")
	return int(v), err
}

// spread waits until A and B each hold half the partitions and are ready.
func (p *pair) spread(ctx context.Context, within time.Duration) error {
	return until(ctx, within, func() error {
		ha, err := held(p.api)
		if err != nil {
			return err
		}
		hb, err := held(p.bHTTP)
		if err != nil {
			return err
		}
		if ha != p.partitions/2 || hb != p.partitions/2 {
			return fmt.Errorf("A holds %d partitions, B %d", ha, hb)
		}
		if err := ready(p.api); err != nil {
			return err
		}
		return ready(p.bHTTP)
	})
}

// alone waits until A holds every partition and is ready.
func (p *pair) alone(ctx context.Context, within time.Duration) error {
	return until(ctx, within, func() error {
		if h, err := held(p.api); err != nil || h != p.partitions {
			return fmt.Errorf("A holds %d partitions (%v)", h, err)
		}
		return ready(p.api)
	})
}

// write sends 100 bytes to every card in one batch, with an idempotency
// key, until it is stored; it returns the batch's log position.
func (p *pair) write(ctx context.Context) (uint64, error) {
	p.mu.Lock()
	r := p.round
	p.round++
	p.mu.Unlock()
	var body bytes.Buffer
	for i, id := range p.ids {
		fmt.Fprintf(&body, `{"record_id":"r%d-%d","iccid":"%s","start_time":"2026-06-20T10:00:00Z","end_time":"2026-06-20T10:01:00Z","bytes_up":100,"bytes_down":0}`+"\n", r, i, id)
	}
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.api+"/v1/usage?carrier=cmcc&wait=false", bytes.NewReader(body.Bytes()))
		req.Header.Set("Content-Type", "application/x-ndjson")
		req.Header.Set("Idempotency-Key", fmt.Sprint("handover-", r))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var res struct {
			Stored   int    `json:"stored"`
			Position uint64 `json:"position"`
		}
		if resp.StatusCode == http.StatusOK && json.Unmarshal(b, &res) == nil && res.Stored == len(p.ids) {
			p.mu.Lock()
			p.want += 100
			p.lastPos = max(p.lastPos, res.Position)
			p.mu.Unlock()
			return res.Position, nil
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			return 0, fmt.Errorf("a batch: %d %s", resp.StatusCode, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, ctx.Err()
}

// counted checks every card's usage, as of the last write, against what
// was sent: it returns the cards whose count differs.
func (p *pair) counted(ctx context.Context) (lost, doubled int, err error) {
	lost, doubled, _, err = p.countedSaying(ctx)
	return lost, doubled, err
}

// countedSaying is counted, and says how the first card that differs does.
func (p *pair) countedSaying(ctx context.Context) (lost, doubled int, first string, err error) {
	p.mu.Lock()
	want, pos := p.want, p.lastPos
	p.mu.Unlock()
	for _, id := range p.ids {
		var got uint64
		err := until(ctx, 30*time.Second, func() error {
			resp, err := http.Get(fmt.Sprintf("%s/v1/cards/%s?min_position=%d", p.api, id, pos))
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var c struct {
				Cycle struct {
					UsageBytes uint64 `json:"usage_bytes"`
				} `json:"cycle"`
			}
			if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &c) != nil {
				return fmt.Errorf("card %s: %d %s", id, resp.StatusCode, b)
			}
			got = c.Cycle.UsageBytes
			return nil
		})
		if err != nil {
			return lost, doubled, first, err
		}
		if got != want && first == "" {
			first = fmt.Sprintf("card %s: %d bytes counted, %d acknowledged", id, got, want)
		}
		switch {
		case got < want:
			lost++
		case got > want:
			doubled++
		}
	}
	return lost, doubled, first, nil
}

// watchStops records when each card's stopped event arrives, on A's
// NATS as the admin, until the returned function is called.
func (p *pair) watchStops() (func(), error) {
	nc, err := nats.Connect(p.natsURL, nats.UserInfo(broker.UserAdmin, p.admin), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	_, err = nc.Subscribe(broker.EventSubject("card.stopped", ">"), func(m *nats.Msg) {
		at := time.Now()
		iccid := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		p.mu.Lock()
		if _, ok := p.stopped[iccid]; !ok {
			p.stopped[iccid] = at
		}
		p.mu.Unlock()
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return nc.Close, nc.Flush()
}

// tinyCards provisions n cards on the tiny plan (1000 bytes, stopped
// over quota), each on an account of its own, so on partitions of both;
// it returns each card's partition.
func (p *pair) tinyCards(n int) (map[string]int, error) {
	ids := map[string]int{}
	for i := 0; i < n; i++ {
		p.tiny++
		pre := fmt.Sprintf("898601%013d", p.tiny)
		id := pre + string(cdr.LuhnDigit(pre))
		acct := fmt.Sprint("tiny", p.tiny)
		if err := send(http.MethodPut, p.api+"/v1/cards/"+id, fmt.Sprintf(`{"account_id": %q, "plan_id": "tiny", "carrier": "cmcc", "auto_stop_over_quota": true}`, acct)); err != nil {
			return nil, err
		}
		ids[id] = broker.Partition(acct, p.partitions)
	}
	return ids, nil
}

// heldBy reads which partitions the instance whose name holds dir has, from
// the projectors' leases.
func (p *pair) heldBy(ctx context.Context, dir string) (map[int]bool, error) {
	nc, err := nats.Connect(p.natsURL, nats.UserInfo(broker.UserAdmin, p.admin))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for n := 0; n < p.partitions; n++ {
		e, err := kv.Get(ctx, lease.PartitionKey(broker.RoleProjector, n))
		if err != nil {
			continue
		}
		var v struct {
			Instance string `json:"instance"`
		}
		if json.Unmarshal(e.Value(), &v) == nil && strings.Contains(v.Instance, dir) {
			out[n] = true
		}
	}
	return out, nil
}

// cross sends each card a record over its quota, and returns when each
// was acknowledged (2xx): the start of its stop latency.
func (p *pair) cross(ctx context.Context, ids map[string]int) (map[string]time.Time, error) {
	acked := map[string]time.Time{}
	for id := range ids {
		body := fmt.Sprintf(`{"record_id":"cross-%s","iccid":"%s","start_time":"2026-06-20T10:00:00Z","end_time":"2026-06-20T10:01:00Z","bytes_up":2000,"bytes_down":0}`+"\n", id, id)
		err := until(ctx, time.Minute, func() error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.api+"/v1/usage?carrier=cmcc&wait=false", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/x-ndjson")
			req.Header.Set("Idempotency-Key", "cross-"+id)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("crossing record: %d", resp.StatusCode)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		acked[id] = time.Now()
	}
	return acked, nil
}

// stopLatencies waits until every card acknowledged has its stopped event
// and returns each one's time from the 2xx to the event.
func (p *pair) stopLatencies(ctx context.Context, acked map[string]time.Time) (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	err := until(ctx, 2*time.Minute, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		for id, t0 := range acked {
			at, ok := p.stopped[id]
			if !ok {
				return fmt.Errorf("card %s: no stopped event yet", id)
			}
			// the event may come before the client has read its 2xx: no
			// wait at all, then
			out[id] = max(at.Sub(t0), 0)
		}
		return nil
	})
	return out, err
}

// HandoverConfig configures a hand-over campaign.
type HandoverConfig struct {
	PairConfig
	Kills int // kill -9 of B, each followed by its restart
	Seed  uint64
}

// HandoverReport is what a hand-over campaign measured.
type HandoverReport struct {
	Kills    int
	Handover []time.Duration // kill -9 of B to A folding all partitions, ready
	// StopLatency is, for records crossing a card's quota sent right
	// after each kill (cards on both instances' partitions), the time from
	// the record's 2xx to the card's stopped event; StopLatencyMoved only
	// those of cards whose partition the killed instance held
	StopLatency, StopLatencyMoved, StopLatencyStayed []time.Duration
	Respread                                         []time.Duration // B restarted to both holding half, ready
	Writes                                           int             // batches acknowledged during the campaign
	Lost                                             int             // cards with fewer bytes counted than acknowledged
	Doubled                                          int             // cards with more
	Mismatch                                         string          // the first card that differs, how
	Partitions                                       int
	LeaseTTL                                         time.Duration
}

// RunHandover kills B (kill -9) Kills times at random moments under load,
// each time measuring how long A takes to fold B's partitions and, after
// B restarts, how long until they are spread again; then it checks every
// card's count against what was acknowledged.
func RunHandover(ctx context.Context, cfg HandoverConfig) (*HandoverReport, error) {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	rep := &HandoverReport{Partitions: cfg.Partitions, LeaseTTL: cfg.LeaseTTL}
	p, err := startPair(ctx, cfg.PairConfig)
	defer p.stop()
	if err != nil {
		return rep, err
	}
	closeWatch, err := p.watchStops()
	if err != nil {
		return rep, err
	}
	defer closeWatch()
	rnd := rand.New(rand.NewPCG(cfg.Seed, 0x68616e646f766572))
	// the load: a batch to every card, back to back; stopping lets the
	// batch in flight finish (cut short, it could be stored unbeknown to
	// the ledger)
	var stopped atomic.Bool
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stopped.Load() && ctx.Err() == nil {
			if _, err := p.write(ctx); err != nil {
				werr = err
				return
			}
			rep.Writes++
			time.Sleep(20 * time.Millisecond)
		}
	}()
	stopWriting := func() { stopped.Store(true) }
	err = func() error {
		for i := 0; i < cfg.Kills && ctx.Err() == nil && werr == nil; i++ {
			crossing, err := p.tinyCards(4)
			if err != nil {
				return err
			}
			onB, err := p.heldBy(ctx, filepath.Join(cfg.Dir, "b"))
			if err != nil {
				return err
			}
			// anywhere within a renewal round of B's leases
			time.Sleep(time.Duration(rnd.Int64N(int64(cfg.LeaseTTL/5)+1)) + time.Second)
			p.b.kill()
			killed := time.Now()
			acked, err := p.cross(ctx, crossing)
			if err != nil {
				return fmt.Errorf("kill %d: %w", i+1, err)
			}
			if err := p.alone(ctx, 10*cfg.LeaseTTL+time.Minute); err != nil {
				return fmt.Errorf("kill %d: B's partitions never came to A: %w", i+1, err)
			}
			rep.Handover = append(rep.Handover, time.Since(killed))
			lat, err := p.stopLatencies(ctx, acked)
			if err != nil {
				return fmt.Errorf("kill %d: %w", i+1, err)
			}
			for id, d := range lat {
				rep.StopLatency = append(rep.StopLatency, d)
				if onB[crossing[id]] {
					rep.StopLatencyMoved = append(rep.StopLatencyMoved, d)
				} else {
					rep.StopLatencyStayed = append(rep.StopLatencyStayed, d)
				}
			}
			if err := p.b.start(); err != nil {
				return err
			}
			restarted := time.Now()
			if err := p.spread(ctx, 10*cfg.LeaseTTL+time.Minute); err != nil {
				return fmt.Errorf("kill %d: never spread again: %w", i+1, err)
			}
			rep.Respread = append(rep.Respread, time.Since(restarted))
			rep.Kills++
			cfg.Log.Info("hand-over", zap.Int("kill", i+1), zap.Duration("handover", rep.Handover[i]), zap.Duration("respread", rep.Respread[i]))
		}
		return nil
	}()
	stopWriting()
	wg.Wait()
	if err == nil {
		err = werr
	}
	if err != nil {
		return rep, err
	}
	rep.Lost, rep.Doubled, rep.Mismatch, err = p.countedSaying(ctx)
	return rep, err
}

// Print writes the report as Markdown.
func (r *HandoverReport) Print(w io.Writer) {
	fmt.Fprintf(w, "| hand-over campaign: %d partitions, lease TTL %s, %d kill -9 of one of two projectors under load | |\n|---|---|\n", r.Partitions, r.LeaseTTL, r.Kills)
	fmt.Fprintf(w, "| kill -9 to its partitions folding on the survivor (ready), p50 / max | %s / %s |\n",
		percentile(r.Handover, 0.5).Round(time.Millisecond), percentile(r.Handover, 1).Round(time.Millisecond))
	fmt.Fprintf(w, "| restart to the partitions spread again (both ready), p50 / max | %s / %s |\n",
		percentile(r.Respread, 0.5).Round(time.Millisecond), percentile(r.Respread, 1).Round(time.Millisecond))
	fmt.Fprintf(w, "| stop latency of %d records crossing a quota sent right after a kill (2xx to the stopped event), p50 / p99 / max | %s / %s / %s |\n",
		len(r.StopLatency), percentile(r.StopLatency, 0.5).Round(time.Millisecond), percentile(r.StopLatency, 0.99).Round(time.Millisecond),
		percentile(r.StopLatency, 1).Round(time.Millisecond))
	fmt.Fprintf(w, "| of which %d on the killed instance's partitions, p50 / p99 / max | %s / %s / %s |\n",
		len(r.StopLatencyMoved), percentile(r.StopLatencyMoved, 0.5).Round(time.Millisecond), percentile(r.StopLatencyMoved, 0.99).Round(time.Millisecond),
		percentile(r.StopLatencyMoved, 1).Round(time.Millisecond))
	fmt.Fprintf(w, "| and %d on the survivor's, p50 / p99 / max | %s / %s / %s |\n",
		len(r.StopLatencyStayed), percentile(r.StopLatencyStayed, 0.5).Round(time.Millisecond), percentile(r.StopLatencyStayed, 0.99).Round(time.Millisecond),
		percentile(r.StopLatencyStayed, 1).Round(time.Millisecond))
	fmt.Fprintf(w, "| batches acknowledged during the campaign | %d |\n| cards with records lost / counted twice | %d / %d |\n", r.Writes, r.Lost, r.Doubled)
	if r.Mismatch != "" {
		fmt.Fprintf(w, "| first difference | %s |\n", r.Mismatch)
	}
}

// Failed reports whether the campaign found a loss or a double count.
func (r *HandoverReport) Failed() bool { return r.Lost > 0 || r.Doubled > 0 || r.Kills == 0 }

// until polls cond until it returns nil, ctx ends or within passes.
func until(ctx context.Context, within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not within %s: %w", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric reads one unlabelled metric from a /metrics page.
func metric(base, name string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no %s at %s", name, base)
}

func ready(base string) error {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/readyz: %d %s", base, resp.StatusCode, b)
	}
	return nil
}

// send sends a JSON body and wants a 200.
func send(method, url, body string) error {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return nil
}
