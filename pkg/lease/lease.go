// Package lease shares a role's partitions among its running instances,
// one owner per partition at a time, on a JetStream key-value bucket and
// nothing else: no consensus of our own.
//
// A partition's lease is the key <role>.partition.<n>, created by the
// instance that takes it (create fails if the key exists) and renewed by
// compare-and-set on its revision. The bucket's MaxAge is the lease's time
// to live: a key its owner stopped renewing ages out, and another instance
// creates it. (A per-key TTL would not do: an update drops it.) The owner
// acts on a partition only while its lease is Valid: within half the time
// to live of the start of its last successful renewal, so that it has
// stopped well before the key can age out and pass, even if it was paused
// or cut off in between. What it may still send after that is fenced
// elsewhere: checkpoints by compare-and-set on their manifest, emitted
// events and accepted usage by their deterministic ids.
//
// Each instance also keeps a member key, <role>.member.<instance>, alive,
// and takes its share of the partitions: ceil(partitions / members). An
// instance over its share gives the excess back (each owner ends with its
// last checkpoint), so that the partitions spread again when an instance
// joins.
package lease

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Config names the role, the instance and the partitions.
type Config struct {
	Role       string // whose partitions: "projector", "sink"
	Instance   string // this process; unique among the role's running instances, stable across its restarts
	Partitions int
	// Round is how often leases are renewed and the share is looked at;
	// default a fifth of the bucket's time to live.
	Round time.Duration
	// OnChange, if set, is called after a round that took or gave up
	// partitions, with the partitions held: for metrics and logs.
	OnChange func(held []int)
}

// ErrLost is the cause of a lease's context when the lease was lost: not
// renewed in time, or taken by another instance. Its owner must stop at
// once, without a last word (no final checkpoint).
var ErrLost = errors.New("lease lost")

// ErrGivenUp is the cause of a lease's context when the instance gives the
// partition back (it holds more than its share, or it stops): the owner
// ends as on a stop, with its last checkpoint, and the lease is released.
var ErrGivenUp = errors.New("lease given up")

// Lease is one partition held by this instance.
type Lease struct {
	Partition int
	Epoch     uint64 // the key's revision when taken: grows with every owner
	m         *Manager
	mu        sync.Mutex
	rev       uint64
	renewed   time.Time // start of the last successful renewal (monotonic)
	lost      bool      // no longer this instance's: not renewed, not released
	released  bool      // being deleted: not renewed any more
	cancel    context.CancelCauseFunc
	done      chan struct{} // closed when the owner's run returned
}

// Valid reports whether the owner may still act on the partition: its
// last renewal began less than half the time to live ago (the bucket's,
// as last read) and it was not lost.
func (l *Lease) Valid() bool {
	ttl := time.Duration(l.m.ttl.Load())
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.lost && time.Since(l.renewed) < ttl/2
}

// Manager keeps this instance's leases.
type Manager struct {
	kv    jetstream.KeyValue
	cfg   Config
	ttl   atomic.Int64 // the bucket's MaxAge, read every round
	log   *zap.Logger
	key   string // the instance, as a key token
	nonce string // this process: tells its own writes from a previous life's
	mu    sync.Mutex
	held  map[int]*Lease // runs this instance keeps
	// leaving are runs ended (lost or given up) that have not returned:
	// their partition is not taken again until they have
	leaving map[int]*Lease
	wg      sync.WaitGroup
	// first is closed after the first round: the instance has taken its
	// share of what was free, or found none.
	first chan struct{}
}

type value struct {
	Instance string    `json:"instance"`
	Nonce    string    `json:"nonce"`
	Since    time.Time `json:"since"`
}

// New returns a manager of leases in kv, whose bucket's MaxAge is the
// lease's time to live. It does nothing until Run.
func New(ctx context.Context, kv jetstream.KeyValue, cfg Config, log *zap.Logger) (*Manager, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease bucket: %w", err)
	}
	if st.TTL() <= 0 {
		return nil, fmt.Errorf("lease bucket %s has no time to live (MaxAge): leases would never pass", st.Bucket())
	}
	if cfg.Round <= 0 {
		cfg.Round = st.TTL() / 5
	}
	if cfg.Round >= st.TTL()/2 {
		return nil, fmt.Errorf("lease round %s is not well inside half the time to live %s", cfg.Round, st.TTL())
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	m := &Manager{kv: kv, cfg: cfg, log: log, key: Token(cfg.Instance), nonce: fmt.Sprintf("%x", nonce),
		held: map[int]*Lease{}, leaving: map[int]*Lease{}, first: make(chan struct{})}
	m.ttl.Store(int64(st.TTL()))
	return m, nil
}

var unsafeKey = regexp.MustCompile(`[^-_=a-zA-Z0-9]`)

// Token is s as one token of a key: characters a key may not hold become
// '_', and a hash of s keeps two names apart that this would make equal.
func Token(s string) string {
	h := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%s-%x", unsafeKey.ReplaceAllString(s, "_"), h[:4])
}

// PartitionKey is partition n's lease key of role.
func PartitionKey(role string, n int) string { return fmt.Sprintf("%s.partition.%d", role, n) }

func (m *Manager) memberKey() string { return m.cfg.Role + ".member." + m.key }

// TTL is the leases' time to live.
func (m *Manager) TTL() time.Duration { return time.Duration(m.ttl.Load()) }

// Started is closed once the first round is done.
func (m *Manager) Started() <-chan struct{} { return m.first }

// Held lists the partitions this instance holds now.
func (m *Manager) Held() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int, 0, len(m.held))
	for p := range m.held {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// Run takes and keeps leases until ctx ends. For each partition it takes
// it calls run on a goroutine of its own, with a context that ends when
// the lease is lost (cause ErrLost) or given up (ErrGivenUp) or ctx ends;
// once run returns, a lease not lost is released. Run returns when ctx has
// ended and every run has returned and released its lease; it renews the
// leases meanwhile (a run's last checkpoint may take a while).
func (m *Manager) Run(ctx context.Context, run func(ctx context.Context, l *Lease)) error {
	tick := time.NewTicker(m.cfg.Round)
	defer tick.Stop()
	first := true
	for ctx.Err() == nil {
		changed := m.round(ctx, run)
		if first {
			close(m.first)
			first = false
		}
		if changed && m.cfg.OnChange != nil {
			m.cfg.OnChange(m.Held())
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	m.mu.Lock()
	for p, l := range m.held {
		l.cancel(ErrGivenUp)
		delete(m.held, p)
		m.leaving[p] = l
	}
	m.mu.Unlock()
	all := make(chan struct{})
	go func() { m.wg.Wait(); close(all) }()
	bg := context.WithoutCancel(ctx)
	for {
		select {
		case <-all:
			m.leaveMembers(bg)
			return nil
		case <-tick.C:
			m.renew(bg)
		}
	}
}

// round renews what is held, ends what is lost, then takes or gives back
// partitions toward this instance's share. It reports whether what is
// held changed.
func (m *Manager) round(ctx context.Context, run func(ctx context.Context, l *Lease)) bool {
	rctx, cancel := context.WithTimeout(ctx, m.cfg.Round)
	defer cancel()
	if st, err := m.kv.Status(rctx); err == nil && st.TTL() > 0 && st.TTL() != m.TTL() {
		// a setup changed it: validity follows the bucket as it is now
		m.log.Warn("lease: the bucket's time to live changed", zap.Duration("was", m.TTL()), zap.Duration("now", st.TTL()))
		m.ttl.Store(int64(st.TTL()))
		if m.cfg.Round >= st.TTL()/2 {
			m.log.Error("lease: renewals are no longer well inside half the time to live: restart the instances", zap.Duration("round", m.cfg.Round))
		}
	}
	changed := m.renew(ctx)
	if _, err := m.kv.Put(rctx, m.memberKey(), []byte(m.cfg.Instance)); err != nil {
		m.log.Warn("lease: announcing this instance", zap.Error(err))
		return changed
	}
	members, err := m.count(rctx, m.cfg.Role+".member.*")
	if err != nil {
		m.log.Warn("lease: counting instances", zap.Error(err))
		return changed
	}
	share := (m.cfg.Partitions + max(members, 1) - 1) / max(members, 1)
	m.mu.Lock()
	held := len(m.held)
	m.mu.Unlock()
	if held > share {
		m.giveBack(held - share)
		return true
	}
	if held == share {
		return changed
	}
	taken, err := m.keys(rctx, m.cfg.Role+".partition.*")
	if err != nil {
		m.log.Warn("lease: listing leases", zap.Error(err))
		return changed
	}
	// start at a place of the instance's own, so that instances starting
	// together do not all race for partition 0
	h := sha256.Sum256([]byte(m.cfg.Instance))
	off := int(binary.BigEndian.Uint32(h[:]) % uint32(max(m.cfg.Partitions, 1)))
	for i := 0; i < m.cfg.Partitions && held < share && rctx.Err() == nil; i++ {
		p := (off + i) % m.cfg.Partitions
		m.mu.Lock()
		_, mine := m.held[p]
		_, ending := m.leaving[p] // its last run here has not returned
		m.mu.Unlock()
		if mine || ending {
			continue
		}
		l, err := m.take(rctx, p, taken[PartitionKey(m.cfg.Role, p)])
		if err != nil {
			m.log.Warn("lease: taking a partition", zap.Int("partition", p), zap.Error(err))
			continue
		}
		if l == nil {
			continue
		}
		held++
		changed = true
		m.start(ctx, l, run)
	}
	return changed
}

// take creates partition p's lease, or takes it over from a previous life
// of this instance (a key whose value names this instance, written by
// another process: one that crashed, since a running one holds the data
// folder's lock); nil if another holds it.
func (m *Manager) take(ctx context.Context, p int, exists bool) (*Lease, error) {
	key := PartitionKey(m.cfg.Role, p)
	now := time.Now()
	b, _ := json.Marshal(value{Instance: m.cfg.Instance, Nonce: m.nonce, Since: now.UTC()})
	var rev uint64
	var err error
	if exists {
		e, gerr := m.kv.Get(ctx, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted):
			rev, err = m.kv.Create(ctx, key, b)
		case gerr != nil:
			return nil, gerr
		default:
			var v value
			if json.Unmarshal(e.Value(), &v) != nil || v.Instance != m.cfg.Instance {
				return nil, nil // another's
			}
			// a previous life of this instance held it (a crash): take it
			// over now rather than wait for it to age out
			rev, err = m.kv.Update(ctx, key, b, e.Revision())
		}
	} else {
		rev, err = m.kv.Create(ctx, key, b)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || wrongLastSequence(err) {
		return nil, nil // another instance got there first
	}
	if err != nil {
		return nil, err
	}
	m.log.Info("lease taken", zap.Int("partition", p), zap.Uint64("epoch", rev))
	return &Lease{Partition: p, Epoch: rev, m: m, rev: rev, renewed: now, done: make(chan struct{})}, nil
}

// wrongLastSequence is JetStream's answer to a compare-and-set that lost
// (10071, or 10164 on a replicated stream), however it is wrapped.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164)
}

func (m *Manager) start(ctx context.Context, l *Lease, run func(ctx context.Context, l *Lease)) {
	lctx, cancel := context.WithCancelCause(ctx)
	l.cancel = cancel
	m.mu.Lock()
	m.held[l.Partition] = l
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(l.done)
		run(lctx, l)
		cancel(ErrGivenUp)
		m.mu.Lock()
		if m.held[l.Partition] == l {
			delete(m.held, l.Partition)
		}
		l.mu.Lock()
		lost := l.lost
		l.released = !lost
		l.mu.Unlock()
		m.mu.Unlock()
		if !lost {
			m.release(l)
		}
		m.mu.Lock()
		if m.leaving[l.Partition] == l {
			delete(m.leaving, l.Partition)
		}
		m.mu.Unlock()
	}()
}

// release deletes a lease this instance still holds, so that another takes
// it at once rather than after it ages out.
func (m *Manager) release(l *Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), m.TTL()/2)
	defer cancel()
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	if err := m.kv.Delete(ctx, PartitionKey(m.cfg.Role, l.Partition), jetstream.LastRevision(rev)); err != nil {
		m.log.Warn("lease: releasing (it ages out instead)", zap.Int("partition", l.Partition), zap.Error(err))
		return
	}
	m.log.Info("lease released", zap.Int("partition", l.Partition))
}

// renew renews, at once, every lease this instance still holds (those
// whose runs it keeps, and those given up whose runs are ending), and ends
// those lost: taken by another, or not renewed within their validity.
func (m *Manager) renew(ctx context.Context) bool {
	m.mu.Lock()
	leases := make([]*Lease, 0, len(m.held)+len(m.leaving))
	for _, l := range m.held {
		leases = append(leases, l)
	}
	for _, l := range m.leaving {
		leases = append(leases, l)
	}
	m.mu.Unlock()
	var changed atomic.Bool
	var wg sync.WaitGroup
	for _, l := range leases {
		l.mu.Lock()
		skip := l.lost || l.released
		l.mu.Unlock()
		if skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !m.renewOne(ctx, l) {
				m.lose(l)
				changed.Store(true)
			}
		}()
	}
	wg.Wait()
	return changed.Load()
}

// renewOne renews l; false when it is lost.
func (m *Manager) renewOne(ctx context.Context, l *Lease) bool {
	key := PartitionKey(m.cfg.Role, l.Partition)
	b, _ := json.Marshal(value{Instance: m.cfg.Instance, Nonce: m.nonce, Since: time.Now().UTC()})
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, m.cfg.Round)
	defer cancel()
	nrev, err := m.kv.Update(rctx, key, b, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || wrongLastSequence(err) {
		// a renewal whose answer was lost may have been stored: the key
		// is still ours if it holds this process's own value
		if e, gerr := m.kv.Get(rctx, key); gerr == nil {
			var v value
			if json.Unmarshal(e.Value(), &v) == nil && v.Instance == m.cfg.Instance && v.Nonce == m.nonce && e.Revision() > rev {
				nrev, err = m.kv.Update(rctx, key, b, e.Revision())
			}
		}
	}
	switch {
	case err == nil:
		l.mu.Lock()
		l.rev, l.renewed = nrev, start
		l.mu.Unlock()
		return true
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || wrongLastSequence(err):
		m.log.Warn("lease lost: another instance holds the partition", zap.Int("partition", l.Partition), zap.Error(err))
		return false
	case ctx.Err() != nil:
		return true // stopping: the next round or the release settles it
	case l.Valid():
		m.log.Warn("lease: renewing failed; retrying", zap.Int("partition", l.Partition), zap.Error(err))
		return true
	default:
		m.log.Warn("lease lost: not renewed in time", zap.Int("partition", l.Partition), zap.Error(err))
		return false
	}
}

// lose ends a lost lease's run at once, without a last word: the
// partition is another's, or soon will be. It is not taken again here
// until that run has returned.
func (m *Manager) lose(l *Lease) {
	l.mu.Lock()
	l.lost = true
	l.mu.Unlock()
	l.cancel(ErrLost)
	m.mu.Lock()
	if m.held[l.Partition] == l {
		delete(m.held, l.Partition)
		m.leaving[l.Partition] = l
	}
	m.mu.Unlock()
}

// giveBack ends the runs of n partitions (the highest numbered): each
// ends with its last checkpoint while its lease is still renewed, then
// releases it, and the instances under their share take them. It does
// not wait: renewals go on meanwhile.
func (m *Manager) giveBack(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	leases := make([]*Lease, 0, len(m.held))
	for _, l := range m.held {
		leases = append(leases, l)
	}
	sort.Slice(leases, func(i, j int) bool { return leases[i].Partition > leases[j].Partition })
	for _, l := range leases[:min(n, len(leases))] {
		m.log.Info("lease: giving a partition back to spread them", zap.Int("partition", l.Partition))
		delete(m.held, l.Partition)
		m.leaving[l.Partition] = l
		l.cancel(ErrGivenUp)
	}
}

func (m *Manager) leaveMembers(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Round)
	defer cancel()
	_ = m.kv.Delete(ctx, m.memberKey()) // else it ages out
}

// keys lists the keys matching filter that hold a value.
func (m *Manager) keys(ctx context.Context, filter string) (map[string]bool, error) {
	kl, err := m.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for k := range kl.Keys() {
		out[k] = true
	}
	_ = kl.Stop() // stopped already once every key came: an error then says so, nothing more
	return out, ctx.Err()
}

func (m *Manager) count(ctx context.Context, filter string) (int, error) {
	ks, err := m.keys(ctx, filter)
	return len(ks), err
}
