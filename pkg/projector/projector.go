// Package projector folds the log into card state: one writer per
// partition, in stream order, through the fold shell (pkg/fold) and the
// pure card package. It publishes what the fold emits, checkpoints state
// and the record-id index incrementally, restores from the last
// checkpoint after a restart, and answers card reads (pkg/query).
//
// Each owned partition lives a cycle, retried for as long as the process
// runs: acquire (take the partition's checkpoint manifest with a new owner
// epoch) → restore (the index's segments and the state's pieces) → fold →
// checkpoint (each one stored under the manifest by compare-and-set with
// the epoch) → release. A failure ends the cycle and starts another after
// a backoff; it never leaves a partition halted while the process looks
// healthy.
package projector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/lease"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// DefaultCheckpointInterval is the longest time between a partition's
// checkpoints while it folds, unless configured.
const DefaultCheckpointInterval = 30 * time.Second

// Config configures a projector.
type Config struct {
	Partitions int    // partitions in the deployment; the instances running share them by leases
	DataDir    string // local folder of the record-id index (a cache of what checkpoints keep)
	// CheckpointEvery and CheckpointInterval: a checkpoint after this many
	// applied messages, or after this long with unsaved ones. The interval
	// is 30 s by default: under load nearly every card changes within it,
	// so a checkpoint costs the fleet's cards whatever its length, and a
	// longer one spreads that over more records (100,000 cards under the
	// bench's load: at 10 s, checkpoints stored 59 bytes per record end to
	// end; at 30 s, 30). A restart folds again what came since, at about
	// a million records a second.
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// CardsPerPiece bounds a base checkpoint piece, and so what a restore
	// reads at once.
	CardsPerPiece int
	// CensusInterval is how often each partition's cards are counted by
	// status for the metrics (default 15 s; about 2 ms of the fold's time
	// per 100,000 cards).
	CensusInterval time.Duration
	// RestoreConcurrency is how many partitions restore at once.
	RestoreConcurrency int
	MaxQueryWait       time.Duration // bound on a read's min_position wait
	// Owner is this instance, as leases and manifests record it: unique
	// among the projectors running, and the same across its restarts, so
	// that a restart after a crash takes its partitions back at once
	// rather than waiting for their leases to age out. Default: the host
	// and the absolute data folder (which a running projector locks).
	Owner string
	// Registerer takes the projector's metrics; nil: none.
	Registerer prometheus.Registerer
	// CrashOnStop makes Run end as a crash would: no flush, no final
	// checkpoint. Tests use it to show that a crash loses and doubles nothing.
	CrashOnStop bool
}

func (c *Config) defaults() {
	if c.Partitions == 0 {
		c.Partitions = broker.DefaultTopology.Partitions
	}
	if c.CensusInterval == 0 {
		c.CensusInterval = 15 * time.Second
	}
	if c.DataDir == "" {
		c.DataDir = "projector-data"
	}
	if c.CheckpointEvery == 0 {
		c.CheckpointEvery = 50000
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.CardsPerPiece == 0 {
		c.CardsPerPiece = 1024
	}
	if c.RestoreConcurrency == 0 {
		// pieces are bounded (CardsPerPiece, FilePart), so a few partitions
		// reading at once stay far below a connection's pending limit
		c.RestoreConcurrency = 4
	}
	if c.MaxQueryWait == 0 {
		c.MaxQueryWait = 5 * time.Second
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		dir, err := filepath.Abs(c.DataDir)
		if err != nil {
			dir = c.DataDir
		}
		c.Owner = host + ":" + dir
	}
}

// Projector runs the partitions it owns. Create it with New and call Run.
type Projector struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *zap.Logger
	parts   map[int]*partition // every partition; this instance folds those it holds a lease of
	leases  atomic.Pointer[lease.Manager]
	restore chan struct{} // a slot per partition restoring at once
	// answering holds a slot per query being answered; past them a query
	// is answered "busy" at once, never queued behind the others
	answering chan struct{}
	m         *metrics
}

// maxAnswering is how many queries the projector answers at once.
const maxAnswering = 4096

// New returns a projector; it does nothing until Run.
func New(nc *nats.Conn, js jetstream.JetStream, cfg Config, log *zap.Logger) *Projector {
	cfg.defaults()
	p := &Projector{cfg: cfg, nc: nc, js: js, log: log, parts: map[int]*partition{},
		restore: make(chan struct{}, cfg.RestoreConcurrency), answering: make(chan struct{}, maxAnswering), m: newMetrics(cfg.Registerer)}
	for id := 0; id < cfg.Partitions; id++ {
		p.parts[id] = &partition{id: id, progress: make(chan struct{}),
			chunks: bySeq[*query.ChunkVerdicts]{max: 50000}, // a batch's answer reads them at once
			inputs: bySeq[*query.Decision]{max: 10000}}
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(collector{p})
	}
	return p
}

// partition is the state of one partition as readers see it. mu guards
// every field; the partition's fold loop is the only writer of state.
type partition struct {
	id       int
	mu       sync.Mutex
	lease    *lease.Lease // while this instance holds the partition
	state    *card.Partition
	applied  uint64                      // last METER sequence whose effects are published
	progress chan struct{}               // closed and replaced when applied moves
	ready    bool                        // restored and folding
	failure  error                       // why its last life ended, until it is ready again
	stuck    bool                        // that failure is the log's: no retry can get past it
	stuckAt  uint64                      // the message it could not fold: stuck until a life folds past it
	pending  uint64                      // log messages of the partition not yet delivered, as of the last one
	chunks   bySeq[*query.ChunkVerdicts] // recent usage chunks' verdicts
	inputs   bySeq[*query.Decision]      // recent other inputs' decisions
	// for the metrics
	census       *card.Census // the cards by status, as of censusAt
	censusAt     time.Time
	foldedStored time.Time // when the last folded message was stored in the log
	checkpointAt time.Time // when the last checkpoint was stored (or the partition restored)
}

// bySeq keeps what the fold made of the latest messages, by log position,
// for answers that read it soon after (a batch's verdicts, a write's
// decision); the oldest go past max. Callers hold the partition's mu.
type bySeq[V any] struct {
	max   int
	m     map[uint64]V
	order []uint64
}

func (b *bySeq[V]) put(seq uint64, v V) {
	if b.m == nil {
		b.m = map[uint64]V{}
	}
	if _, ok := b.m[seq]; !ok {
		b.order = append(b.order, seq)
	}
	b.m[seq] = v
	if len(b.order) > b.max {
		delete(b.m, b.order[0])
		b.order = b.order[1:]
	}
}

// pick returns those of seqs it keeps, and whether it keeps them all.
func (b *bySeq[V]) pick(seqs []uint64) (map[uint64]V, bool) {
	out := make(map[uint64]V, len(seqs))
	for _, seq := range seqs {
		if v, ok := b.m[seq]; ok {
			out[seq] = v
		}
	}
	return out, len(out) == len(seqs)
}

// Run takes this instance's share of the partitions (a lease each, shared
// with the other projectors running) and folds them until ctx ends, then
// each one flushes, checkpoints and gives its lease back. A partition's
// failure is retried, never final; one whose lease is lost stops at once
// and another instance goes on from its last checkpoint. Run returns an
// error only when it cannot start.
func (p *Projector) Run(ctx context.Context) error {
	unlock, err := lockDir(p.cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	kv, err := p.js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		return fmt.Errorf("projector: the lease bucket %s: %w", broker.BucketLeases, err)
	}
	mgr, err := lease.New(ctx, kv, lease.Config{Role: broker.RoleProjector, Instance: p.cfg.Owner, Partitions: p.cfg.Partitions,
		OnChange: func(held []int) {
			p.m.held.Set(float64(len(held)))
			p.log.Info("partitions held", zap.Ints("partitions", held))
		}}, p.log.Named("lease"))
	if err != nil {
		return fmt.Errorf("projector: %w", err)
	}
	p.leases.Store(mgr)
	return mgr.Run(ctx, p.own)
}

// own folds a partition while this instance holds its lease: it answers
// the partition's queries and runs its lives.
func (p *Projector) own(ctx context.Context, l *lease.Lease) {
	pt := p.parts[l.Partition]
	log := p.log.With(zap.Int("partition", pt.id), zap.Uint64("lease_epoch", l.Epoch))
	pt.mu.Lock()
	pt.lease, pt.failure, pt.stuck = l, nil, false
	pt.mu.Unlock()
	defer func() {
		pt.mu.Lock()
		if pt.lease == l { // not a later run's (the manager starts one only after this returns)
			pt.lease, pt.state, pt.ready, pt.failure, pt.stuck, pt.pending = nil, nil, false, nil, false, 0
			pt.census, pt.foldedStored, pt.checkpointAt = nil, time.Time{}, time.Time{}
		}
		pt.mu.Unlock()
		log.Info("partition left", zap.NamedError("cause", context.Cause(ctx)))
	}()
	// Each query is answered on its own goroutine: one that waits for a
	// position (a batch's verdicts, a write's decision) must not hold up
	// the card reads behind it. A plain subscription, not a queue group:
	// during a hand-over the old owner may still be subscribed (paused,
	// or not yet aware), and a queue group could give it the query to
	// answer; this way every subscriber gets it, an owner whose lease is
	// not valid says nothing, and the asker takes the owner's answer.
	sub, err := p.nc.Subscribe(broker.QuerySubject(pt.id), func(m *nats.Msg) {
		if !l.Valid() {
			return
		}
		select {
		case p.answering <- struct{}{}:
			go func() {
				defer func() { <-p.answering }()
				p.answer(ctx, pt, m)
			}()
		default:
			p.busy(m)
		}
	})
	if err != nil {
		log.Warn("subscribing to the partition's queries; giving it back", zap.Error(err))
		return
	}
	defer sub.Unsubscribe() //nolint:errcheck // leaving it
	p.keep(ctx, pt, l)
}

// keep runs the partition's lives one after another until ctx ends: a life
// that fails is followed by another after a backoff that grows while the
// failures go on, and resets once a life has run for a while.
func (p *Projector) keep(ctx context.Context, pt *partition, l *lease.Lease) {
	log := p.log.With(zap.Int("partition", pt.id))
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		r := &runner{p: p, pt: pt, lease: l, log: log}
		started := time.Now()
		err := r.life(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("partition stopped folding")
		}
		stuck := errors.Is(err, errStuck)
		pt.mu.Lock()
		pt.state, pt.ready, pt.failure, pt.stuck = nil, false, err, stuck
		pt.mu.Unlock()
		p.m.restarts.WithLabelValues(fmt.Sprint(pt.id)).Inc()
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		if stuck {
			log.Error("partition cannot fold the log; it retries, and the process reports unhealthy", zap.Error(err), zap.Duration("retry_in", wait))
		} else {
			log.Warn("partition failed; restoring again", zap.Error(err), zap.Duration("retry_in", wait))
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// Ready reports whether this instance has taken its share of the
// partitions and every one it holds has restored and is folding.
func (p *Projector) Ready() error {
	mgr := p.leases.Load()
	if mgr == nil {
		return errors.New("projector starting")
	}
	select {
	case <-mgr.Started():
	default:
		return errors.New("projector taking its partitions")
	}
	for _, pt := range p.sorted() {
		pt.mu.Lock()
		held, ready, failure := pt.lease != nil, pt.ready, pt.failure
		pt.mu.Unlock()
		switch {
		case !held:
		case failure != nil:
			return fmt.Errorf("partition %d is retrying after: %w", pt.id, failure)
		case !ready:
			return fmt.Errorf("partition %d is restoring", pt.id)
		}
	}
	return nil
}

// Owner is this instance's name in the leases (Config.Owner, or its
// default: the host and the absolute data folder).
func (p *Projector) Owner() string { return p.cfg.Owner }

// Held lists the partitions this instance holds now.
func (p *Projector) Held() []int {
	if mgr := p.leases.Load(); mgr != nil {
		return mgr.Held()
	}
	return nil
}

func (p *Projector) sorted() []*partition {
	out := make([]*partition, 0, len(p.parts))
	for i := 0; i < p.cfg.Partitions; i++ {
		out = append(out, p.parts[i])
	}
	return out
}

// Healthy reports whether every partition can make progress: one that
// cannot fold what the log holds fails it, so that a supervisor restarts
// the process (and someone looks at the log) instead of a process that
// looks alive and folds nothing.
func (p *Projector) Healthy() error {
	for _, pt := range p.sorted() {
		pt.mu.Lock()
		stuck, failure := pt.stuck, pt.failure
		pt.mu.Unlock()
		if stuck {
			return fmt.Errorf("partition %d cannot fold the log: %w", pt.id, failure)
		}
	}
	return nil
}

// Applied is the last METER sequence partition part has applied and whose
// effects are published.
func (p *Projector) Applied(part int) uint64 {
	pt := p.parts[part]
	if pt == nil {
		return 0
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.applied
}

// Lag is how many log messages the partitions have not yet folded: those
// waiting in JetStream as of the last delivered one, plus those delivered
// and not yet folded.
func (p *Projector) Lag() uint64 {
	var n uint64
	for _, pt := range p.parts {
		pt.mu.Lock()
		n += pt.pending
		pt.mu.Unlock()
	}
	return n
}

// State calls f with each ready partition's state, under its lock: for
// measurements and tests.
func (p *Projector) State(f func(part int, s *card.Partition)) {
	for id, pt := range p.parts {
		pt.mu.Lock()
		if pt.state != nil && pt.ready {
			f(id, pt.state)
		}
		pt.mu.Unlock()
	}
}

type metrics struct {
	restarts       *prometheus.CounterVec
	ready          prometheus.Gauge
	restoreSeconds prometheus.Histogram
	checkpointSecs prometheus.Histogram
	checkpointB    prometheus.Counter
	checkpointErrs prometheus.Counter
	lookups        prometheus.Counter
	publishRetries prometheus.Counter
	indexEntries   *prometheus.GaugeVec
	held           prometheus.Gauge
	published      prometheus.Counter
	emitted        *prometheus.CounterVec
	stops          *prometheus.CounterVec
	resumes        *prometheus.CounterVec
	foldDelay      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_projector_partition_failures_total",
			Help: "Lives of a partition that ended in a failure (each is retried: restore and fold again)."}, []string{"partition"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_projector_partitions_ready",
			Help: "Partitions restored and folding."}),
		restoreSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cardmeter_projector_restore_seconds",
			Help: "Time a partition took to restore its checkpoint.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}),
		checkpointSecs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cardmeter_projector_checkpoint_seconds",
			Help: "Time to store a checkpoint (index segments, state pieces, manifest).", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		checkpointB: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_projector_checkpoint_bytes_total",
			Help: "Bytes of checkpoints stored: state pieces and index segments, merged segments included."}),
		checkpointErrs: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_projector_checkpoint_retries_total",
			Help: "Failed attempts at a step of a checkpoint (retried with backoff)."}),
		publishRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_projector_publish_retries_total",
			Help: "Failed attempts to publish what the fold emitted (retried with backoff; /readyz says so meanwhile)."}),
		lookups: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_projector_index_lookups_total",
			Help: "Record ids looked up in the exact index (the filters could not rule them out)."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_projector_published_total",
			Help: "Messages the fold emitted and this instance published (events and counted usage), acknowledged."}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_projector_partitions_held",
			Help: "Partitions this instance holds the lease of (the projectors running share them)."}),
		indexEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cardmeter_projector_index_entries",
			Help: "Record ids in the exact index, by partition."}, []string{"partition"}),
		emitted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_events_emitted_total",
			Help: "Events the fold emitted and this instance published, by type (a replay's repeats, dropped by the log, are not counted)."}, []string{"type"}),
		stops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_stops_total",
			Help: "Stop reasons raised on cards (card.stopped events), by reason."}, []string{"reason"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_resumes_total",
			Help: "Cards back in service (card.resumed events), by the reason whose clearing resumed them."}, []string{"reason"}),
		foldDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cardmeter_projector_fold_delay_seconds",
			Help: "From a message's storage in the log to its fold.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}),
	}
	if reg != nil {
		reg.MustRegister(m.restarts, m.ready, m.restoreSeconds, m.checkpointSecs, m.checkpointB, m.checkpointErrs, m.lookups, m.publishRetries,
			m.indexEntries, m.held, m.published, m.emitted, m.stops, m.resumes, m.foldDelay)
	}
	return m
}

// lockDir takes the data folder for this process alone: two projectors on
// one folder would share an index, and one instance name.
func lockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("projector: data folder: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("projector: data folder: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("projector: data folder %s is in use by another process (%w): give each projector a folder of its own", dir, err)
	}
	return func() { _ = f.Close() }, nil
}
