// Package chaos is a fault campaign against the real all-in-one binary:
// it runs the binary as a child process on its own data folder, with its
// own ClickHouse, writes usage at a target rate while it kills the process
// (kill -9, SIGTERM, kill -9 during start-up) and stops ClickHouse at
// random moments, keeps a ledger of every record the API acknowledged, and
// at the end checks card state, ClickHouse and the emitted stops against
// that ledger. Everything listens on loopback and every wait has a
// deadline: a restart that never becomes ready is a finding, not a hang.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// Config configures a campaign. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	Binary  string // the cardmeter binary (see Build)
	WorkDir string // removed and made again: data folders and logs
	Script  string // deploy/local/clickhouse.sh; default: found above the working directory

	Duration time.Duration // how long faults are injected while writing
	Kills    int           // kill points planned (a start-up kill is also preceded by a kill -9)
	CHStops  int           // ClickHouse stops planned
	Rate     float64       // target records per second, over all writers
	Writers  int           // concurrent writers, one carrier each (1 or 2 make sense)
	Batch    int           // new records per batch
	ResendPM int           // re-sent records per thousand new ones
	Cards    int
	Accounts int
	Seed     uint64

	ReadyTimeout       time.Duration // a start not ready by then is a failure
	CatchUpTimeout     time.Duration // the final wait for projector and sink
	CheckpointInterval time.Duration // passed to the binary
	Database           string        // ClickHouse database of the campaign

	Log *zap.Logger
}

// DefaultConfig is `make chaos`: eight minutes of faults at 20,000
// records/s, about ten minutes in all.
var DefaultConfig = Config{
	WorkDir:            ".data/chaos",
	Duration:           8 * time.Minute,
	Kills:              60,
	CHStops:            4,
	Rate:               20000,
	Writers:            2,
	Batch:              2000,
	ResendPM:           10,
	Cards:              200,
	Accounts:           20,
	Seed:               1,
	ReadyTimeout:       60 * time.Second,
	CatchUpTimeout:     3 * time.Minute,
	CheckpointInterval: 5 * time.Second,
	Database:           "chaos",
}

func (c Config) withDefaults() Config {
	d := DefaultConfig
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	set(&c.Writers, d.Writers)
	set(&c.Batch, d.Batch)
	set(&c.Cards, d.Cards)
	set(&c.Accounts, d.Accounts)
	if c.WorkDir == "" {
		c.WorkDir = d.WorkDir
	}
	if c.Duration == 0 {
		c.Duration = d.Duration
	}
	if c.Rate == 0 {
		c.Rate = d.Rate
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = d.ReadyTimeout
	}
	if c.CatchUpTimeout == 0 {
		c.CatchUpTimeout = d.CatchUpTimeout
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = d.CheckpointInterval
	}
	if c.Database == "" {
		c.Database = d.Database
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	return c
}

// Build compiles the all-in-one into dir and returns its path. It runs
// the go tool, so it works from anywhere inside the module.
func Build(ctx context.Context, dir string) (string, error) {
	return buildService(ctx, dir, "cardmeter")
}

// BuildProjector compiles the projector service into dir.
func BuildProjector(ctx context.Context, dir string) (string, error) {
	return buildService(ctx, dir, "projector")
}

// buildService compiles services/<name> into dir/<name>.
func buildService(ctx context.Context, dir, name string) (string, error) {
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/cardmeter/cardmeter/services/"+name)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}

// clockStart is the manual clock's time: mid-cycle, so that every record
// (1 to 72 hours old) counts in the current cycle and the cycle never
// rolls during the campaign.
var clockStart = time.Date(2026, 6, 20, 12, 0, 0, 0, time.FixedZone("CST", 8*3600))

// campaign is one run's state.
type campaign struct {
	cfg       Config
	log       *zap.Logger
	rnd       *rand.Rand
	rep       *Report
	ch        *chServer
	node      *node
	api       *apiClient
	fleet     *fleet
	ledger    *ledger
	natsPort  int
	natsAdmin string          // the admin user's password on the all-in-one's embedded NATS, for the checks
	halts     map[string]bool // halted partitions seen, by process start and reason
	// cycleStart is the current cycle's start as ClickHouse's
	// toUnixTimestamp(cycle_start) prints it.
	cycleStart string
}

// Run runs a campaign. The error is for a campaign that could not run
// (setup, a harness fault); what the campaign found is in the report,
// whose Failed says whether the system passed.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	if cfg.Binary == "" {
		return nil, errors.New("chaos: no binary (see Build)")
	}
	if cfg.Script == "" {
		s, err := findScript()
		if err != nil {
			return nil, fmt.Errorf("chaos: finding clickhouse.sh: %w", err)
		}
		cfg.Script = s
	}
	work, err := filepath.Abs(cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(work); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	c := &campaign{
		cfg: cfg, log: cfg.Log, rnd: rand.New(rand.NewPCG(cfg.Seed, 0x6368616f73)),
		rep:    &Report{Kills: map[string]int{}, Cards: cfg.Cards, TargetRate: cfg.Rate},
		ch:     &chServer{script: cfg.Script, dataDir: work, tcpPort: ports[0], http: ports[1], logPath: filepath.Join(work, "clickhouse.log")},
		ledger: newLedger(), natsPort: ports[2], natsAdmin: broker.NewPassword(), halts: map[string]bool{},
		cycleStart: strconv.FormatInt(time.Date(2026, 6, 1, 0, 0, 0, 0, clockStart.Location()).Unix(), 10),
	}
	httpAddr := "127.0.0.1:" + strconv.Itoa(ports[3])
	c.api = newAPIClient("http://" + httpAddr)
	c.node = &node{bin: cfg.Binary, logPath: filepath.Join(work, "cardmeter.log"), api: c.api, log: c.log, args: []string{"run",
		"--data-dir", filepath.Join(work, "data"), "--http-addr", httpAddr, "--nats-port", strconv.Itoa(c.natsPort),
		"--clickhouse-addr", c.ch.addr(), "--clickhouse-db", cfg.Database,
		"--clock", "manual", "--clock-start", clockStart.Format(time.RFC3339),
		"--checkpoint-interval", cfg.CheckpointInterval.String(), "--log-level", "info"},
		env: []string{"CARDMETER_NATS_ADMIN_PASSWORD=" + c.natsAdmin}}
	expected := uint64(cfg.Rate * cfg.Duration.Seconds() * avgRecordBytes)
	c.fleet = newFleet(cfg.Cards, cfg.Accounts, cfg.Writers, expected)

	start := time.Now()
	defer func() { c.rep.Elapsed = time.Since(start) }()
	c.log.Info("starting clickhouse", zap.String("addr", c.ch.addr()), zap.String("workdir", work))
	if err := c.ch.run(ctx, "start"); err != nil {
		return nil, err
	}
	defer func() {
		// a fresh context: the campaign's may be what ended
		if err := c.ch.run(context.Background(), "stop"); err != nil {
			c.log.Warn("stopping clickhouse", zap.Error(err))
		}
	}()
	defer func() {
		if c.node.running() {
			c.node.kill()
		}
	}()
	err = c.run(ctx)
	return c.rep, err
}

// run is the campaign once ClickHouse runs: start, provision, write under
// faults, then the last clean start, the catch-up and the checks.
func (c *campaign) run(ctx context.Context) error {
	if err := c.node.start(); err != nil {
		return err
	}
	if _, err := c.node.waitReady(ctx, c.cfg.ReadyTimeout); err != nil {
		return fmt.Errorf("first start: %w (log: %s)", err, c.node.logPath)
	}
	c.log.Info("all-in-one ready; provisioning", zap.Int("cards", c.cfg.Cards))
	if err := c.fleet.provision(ctx, c.api); err != nil {
		return fmt.Errorf("provisioning: %w", err)
	}

	gen := newGenerator(c.cfg.Seed, clockStart.Unix(), c.fleet, c.cfg.Writers)
	// Writers stop taking new batches when stop closes, and finish the one
	// in flight (retried until answered) within wctx.
	stop := make(chan struct{})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var wg sync.WaitGroup
	errs := make([]error, c.cfg.Writers)
	writeStart := time.Now()
	for i := 0; i < c.cfg.Writers; i++ {
		w := &writer{id: i, carrier: carrierOf(i), csv: i%2 == 0, batch: c.cfg.Batch, rate: c.cfg.Rate / float64(c.cfg.Writers),
			resendPM: c.cfg.ResendPM, seed: c.cfg.Seed, gen: gen, fleet: c.fleet, api: c.api, ledger: c.ledger, log: c.log}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = w.run(wctx, stop); errs[i] != nil {
				c.log.Error("writer stopped", zap.Int("writer", i), zap.Error(errs[i]))
			}
		}()
	}

	c.faults(ctx)

	// The writers' last batches need the API: the node runs (faults
	// always restart it), ready or not.
	close(stop)
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(2 * time.Minute):
		wcancel()
		<-drained
	}
	writeTime := time.Since(writeStart)
	for _, err := range errs {
		var u *errUnresolved
		switch {
		case errors.As(err, &u):
			c.rep.Unresolved++
			c.rep.fail("%v", u)
		case err != nil:
			return err
		}
	}
	c.fillLedgerStats(writeTime)

	// The last clean start: SIGTERM, start, ready, caught up.
	c.log.Info("final clean restart")
	if how, clean := c.node.terminate(time.Minute); !clean {
		c.rep.DirtyShutdowns = append(c.rep.DirtyShutdowns, "final: "+how)
		c.rep.fail("final SIGTERM: %s", how)
	}
	if !c.restart(ctx, "final start", 3) {
		c.rep.fail("the final start never became ready: card state and stops cannot be checked")
		return nil
	}
	caught := time.Now()
	if err := c.catchUp(ctx); err != nil {
		c.rep.fail("catching up: %v", err)
	}
	c.rep.CatchUp = time.Since(caught)
	c.log.Info("checking", zap.Uint64("records", c.rep.Records))
	c.rep.Checked = true
	c.checkCards(ctx, c.ledger.perCard(len(c.fleet.cards)))
	c.checkClickHouse(ctx)
	c.checkEvents(ctx)
	if how, clean := c.node.terminate(time.Minute); !clean {
		c.rep.DirtyShutdowns = append(c.rep.DirtyShutdowns, "end: "+how)
		c.rep.fail("SIGTERM at the end: %s", how)
	}
	if c.rep.Rejected > 0 {
		c.rep.fail("%d valid records were rejected (first: %s)", c.rep.Rejected, c.ledger.firstRej)
	}
	return nil
}

func (c *campaign) fillLedgerStats(writeTime time.Duration) {
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	c.rep.Records, c.rep.Bytes = c.ledger.total.records, c.ledger.total.up+c.ledger.total.down
	c.rep.Batches, c.rep.Resent, c.rep.Rejected = c.ledger.batches, c.ledger.resent, c.ledger.rejected
	c.rep.RatePerSec = float64(c.rep.Records) / writeTime.Seconds()
	c.rep.NoAnswer, c.rep.Unavailable, c.rep.Replayed = c.api.noAnswer.Load(), c.api.unavail.Load(), c.api.replayed.Load()
}

// fault kinds of the plan.
const faultCH = "clickhouse"

// plan lays out the faults: kills and ClickHouse stops in random order,
// the first kills covering each kind once, the rest mostly kill -9.
func (c *campaign) plan() []string {
	var kills []string
	base := []string{KillSIGKILL, KillSIGTERM, KillStartup}
	c.rnd.Shuffle(len(base), func(i, j int) { base[i], base[j] = base[j], base[i] })
	for i := 0; i < c.cfg.Kills; i++ {
		if i < len(base) {
			kills = append(kills, base[i])
			continue
		}
		switch r := c.rnd.IntN(100); {
		case r < 70:
			kills = append(kills, KillSIGKILL)
		case r < 85:
			kills = append(kills, KillSIGTERM)
		default:
			kills = append(kills, KillStartup)
		}
	}
	out := append([]string(nil), kills...)
	for i := 0; i < c.cfg.CHStops; i++ {
		at := c.rnd.IntN(len(out) + 1)
		out = append(out[:at], append([]string{faultCH}, out[at:]...)...)
	}
	return out
}

// faults injects the planned faults over cfg.Duration: fault i at a
// random moment of the i-th equal slot, or as soon as the previous one is
// over. Between faults it restarts a process that exited on its own, as
// a supervisor would.
func (c *campaign) faults(ctx context.Context) {
	plan := c.plan()
	begin := time.Now()
	end := begin.Add(c.cfg.Duration)
	slot := c.cfg.Duration / time.Duration(max(len(plan), 1))
	for i, f := range plan {
		at := begin.Add(time.Duration(i)*slot + time.Duration((0.2+0.6*c.rnd.Float64())*float64(slot)))
		if !c.idleUntil(ctx, at) {
			return
		}
		if time.Now().After(end) {
			c.log.Warn("campaign time is up before every planned fault", zap.Int("done", i), zap.Int("planned", len(plan)))
			return
		}
		c.log.Info("fault", zap.Int("n", i+1), zap.String("kind", f))
		if f == faultCH {
			c.bounceClickHouse(ctx)
		} else {
			c.kill(ctx, f)
		}
	}
	c.idleUntil(ctx, end)
}

// idleUntil waits until t, restarting the process if it exits on its own
// and asking /readyz each second for a partition that halted while it
// runs. It returns false when ctx ends.
func (c *campaign) idleUntil(ctx context.Context, t time.Time) bool {
	lastAsked := time.Now()
	for time.Now().Before(t) {
		if how, exited := c.node.exitedUnasked(); exited {
			c.rep.UnexpectedExits = append(c.rep.UnexpectedExits, how)
			c.log.Warn("the all-in-one exited by itself: restarting it", zap.String("exit", how))
			c.restart(ctx, "after an unexpected exit", 2)
		}
		if time.Since(lastAsked) > time.Second {
			lastAsked = time.Now()
			if rd := c.node.readyz(ctx); halted(rd.Detail) {
				c.sawHalted(rd.Detail)
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(min(200*time.Millisecond, time.Until(t))):
		}
	}
	return ctx.Err() == nil
}

// sawHalted records a halted partition once per process start and reason.
func (c *campaign) sawHalted(reason string) {
	key := c.node.startedAt().String() + reason
	if c.halts[key] {
		return
	}
	c.halts[key] = true
	c.rep.Halted = append(c.rep.Halted, reason)
	c.rep.fail("halted: %s", reason)
}

// kill performs one kill point of the kind and restarts the process.
func (c *campaign) kill(ctx context.Context, kind string) {
	switch kind {
	case KillSIGTERM:
		c.rep.Kills[KillSIGTERM]++
		if how, clean := c.node.terminate(time.Minute); !clean {
			c.rep.DirtyShutdowns = append(c.rep.DirtyShutdowns, how)
			c.rep.fail("SIGTERM: %s", how)
		}
	case KillSIGKILL:
		c.rep.Kills[KillSIGKILL]++
		c.node.kill()
	case KillStartup:
		// kill -9 now, start, and kill -9 again at a random moment before
		// /readyz answers 200 (a start that is ready first counts as a
		// plain kill -9).
		c.rep.Kills[KillSIGKILL]++
		c.node.kill()
		c.rep.Restarts++
		if err := c.node.start(); err != nil {
			c.rep.fail("start: %v", err)
			return
		}
		// before the fastest start seen was ready, so that the kill lands
		// in start-up (opening the store, restoring partitions) most times
		fastest := percentile(c.rep.ReadyTimes, 0)
		if fastest == 0 {
			fastest = 150 * time.Millisecond
		}
		delay := time.Duration((0.05 + 0.65*c.rnd.Float64()) * float64(fastest))
		deadline := time.Now().Add(delay)
		ready := false
		for time.Now().Before(deadline) && !ready {
			ready = c.node.readyz(ctx).Ready
			time.Sleep(min(20*time.Millisecond, time.Until(deadline)))
		}
		if ready {
			c.rep.Kills[KillSIGKILL]++
		} else {
			c.rep.Kills[KillStartup]++
		}
		c.node.kill()
	}
	c.restart(ctx, kind, 2)
}

// restart starts the process and waits (bounded) until it is ready, up
// to attempts times: a start that is not ready in time is reported with
// /readyz's last reason and killed before the next attempt; the last one
// is left running (its API still takes writes) for the next fault to
// kill. It returns whether the process ended up ready.
func (c *campaign) restart(ctx context.Context, after string, attempts int) bool {
	for attempt := 0; attempt < attempts; attempt++ {
		c.rep.Restarts++
		if err := c.node.start(); err != nil {
			c.rep.fail("start: %v", err)
			return false
		}
		d, err := c.node.waitReady(ctx, c.cfg.ReadyTimeout)
		if err == nil {
			c.rep.ReadyTimes = append(c.rep.ReadyTimes, d)
			c.log.Info("ready", zap.String("after", after), zap.Duration("time_to_ready", d))
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		var nr *errNeverReady
		msg := fmt.Sprintf("restart after %s: %v", after, err)
		if errors.As(err, &nr) && halted(nr.last) {
			c.rep.HaltedRestarts++
			c.halts[c.node.startedAt().String()+nr.last] = true
		}
		c.rep.NeverReady = append(c.rep.NeverReady, msg)
		c.rep.fail("%s", msg)
		c.log.Error("restart never became ready", zap.String("after", after), zap.Error(err))
		if attempt == attempts-1 {
			break
		}
		c.rep.Kills[KillSIGKILL]++
		c.node.kill()
		after = "a never-ready start"
	}
	return false
}

// bounceClickHouse stops ClickHouse for a few seconds while writes go on,
// starts it again, and waits (bounded) until the sink is healthy again.
func (c *campaign) bounceClickHouse(ctx context.Context) {
	c.rep.CHStops++
	if err := c.ch.run(ctx, "stop"); err != nil {
		c.rep.fail("%v", err)
	}
	down := time.Duration(2+c.rnd.IntN(5)) * time.Second
	select {
	case <-ctx.Done():
	case <-time.After(down):
	}
	if err := c.ch.run(ctx, "start"); err != nil {
		c.rep.fail("%v", err)
		return
	}
	up := time.Now()
	deadline := up.Add(c.cfg.ReadyTimeout)
	last := ""
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rd := c.node.readyz(ctx)
		if rd.Ready {
			c.rep.SinkRecoveries = append(c.rep.SinkRecoveries, time.Since(up))
			return
		}
		last = rd.Detail
		time.Sleep(100 * time.Millisecond)
	}
	c.rep.fail("not ready within %s of ClickHouse's return; last /readyz: %s", c.cfg.ReadyTimeout, last)
}

// catchUp waits until /readyz reports no projector lag and no sink backlog
// three times in a row, and every durable consumer of the pipeline's
// streams has nothing pending and nothing awaiting an ack. The second half
// matters: /readyz's sink backlog counts undelivered messages only, and
// what a killed sink had fetched but not acked comes back only when its
// ack wait (30 s) runs out.
func (c *campaign) catchUp(ctx context.Context) error {
	deadline := time.Now().Add(c.cfg.CatchUpTimeout)
	streak := 0
	var rd readiness
	behind := "not asked yet"
	for time.Now().Before(deadline) {
		if rd = c.node.readyz(ctx); rd.Ready && rd.Lag == 0 && rd.Pending == 0 {
			streak++
		} else {
			streak = 0
		}
		if streak >= 3 {
			if behind = c.consumersBehind(ctx); behind == "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("not caught up within %s: ready %t, projector lag %d, sink pending %d, %s; consumers: %s",
		c.cfg.CatchUpTimeout, rd.Ready, rd.Lag, rd.Pending, rd.Detail, behind)
}

// consumersBehind names a durable consumer of METER, ACCEPTED or EVENTS
// with messages pending or awaiting an ack, or returns "" when none is.
func (c *campaign) consumersBehind(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(c.natsPort), nats.Name("chaos-catch-up"), nats.UserInfo(broker.UserAdmin, c.natsAdmin))
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err.Error()
	}
	for _, name := range []string{broker.StreamMeter, broker.StreamAccepted, broker.StreamEvents} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return err.Error()
		}
		l := st.ListConsumers(ctx)
		for ci := range l.Info() {
			if ci.Config.Durable == "" {
				continue // an ordered reader of a process that may be gone
			}
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				return fmt.Sprintf("%s/%s: %d pending, %d awaiting ack", name, ci.Name, ci.NumPending, ci.NumAckPending)
			}
		}
		if err := l.Err(); err != nil {
			return err.Error()
		}
	}
	return ""
}

// freePorts returns n distinct free loopback TCP ports.
func freePorts(n int) ([]int, error) {
	var out []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
