package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/lanes"
	"github.com/cardmeter/cardmeter/pkg/lease"
)

// Config configures a notifier.
type Config struct {
	Instance string // this process among the notifiers (stable across restarts)
	// Timeout is how long an endpoint has to answer 2xx; default 10 s.
	Timeout time.Duration
	// RetryFor is how long an event is retried (from its first attempt)
	// before it goes to the dead letters; default 24 h.
	RetryFor time.Duration
	// DisableAfter disables a subscription whose endpoint has failed
	// every attempt for this long; default 72 h.
	DisableAfter time.Duration
	// MaxInterval bounds the wait between two attempts of an event
	// (Retry-After included); default 10 min.
	MaxInterval time.Duration
	// AllowPrivate lets deliveries reach loopback, link-local and private
	// addresses (tests, a receiver on the same network).
	AllowPrivate bool
	// Partitions is the log's: a webhook disabled is written to METER,
	// on the partition of its id, and folded into an event.
	Partitions int
}

// Units are the shares of the notifiers' work, leased like the
// projector's partitions: subscription id belongs to unit fnv(id) % Units.
const Units = 16

// ackWait is how long a message in hand stays this notifier's without
// word; a retry waiting longer says it is still in progress.
const ackWait = time.Minute

// maxAckPending bounds the events of a subscription in hand at once.
const maxAckPending = 1000

// maxResponseBody is how much of an endpoint's answer is read.
const maxResponseBody = 64 << 10

// Notifier delivers events to the subscriptions of the units it leases.
type Notifier struct {
	cfg     Config
	js      jetstream.JetStream
	store   *Store
	retries jetstream.KeyValue // first attempts of failing events
	client  *http.Client
	log     *zap.Logger

	mu      sync.Mutex
	subs    map[string]*Subscription // as the bucket has them
	changed chan struct{}            // closed and replaced when subs change
	leases  *lease.Manager
	failing map[string]error // subscriptions whose consumer cannot be read, why

	delivered *prometheus.CounterVec
	latency   prometheus.Histogram
	inHand    prometheus.Gauge
	// webhooks this notifier disabled
	disabledTotal prometheus.Counter
}

// New makes a notifier; Run runs it.
func New(js jetstream.JetStream, cfg Config, reg prometheus.Registerer, log *zap.Logger) *Notifier {
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 24 * time.Hour
	}
	if cfg.DisableAfter == 0 {
		cfg.DisableAfter = 72 * time.Hour
	}
	if cfg.MaxInterval == 0 {
		cfg.MaxInterval = 10 * time.Minute
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s:%d:%d", host, os.Getpid(), instances.Add(1))
	}
	n := &Notifier{cfg: cfg, js: js, client: Client(cfg.Timeout, cfg.AllowPrivate), log: log,
		subs: map[string]*Subscription{}, changed: make(chan struct{}), failing: map[string]error{},
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_webhook_attempts_total",
			Help: "Webhook delivery attempts by result: delivered, failed (retried), dead (past the retry window), skipped (not the subscription's)."}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cardmeter_webhook_delivery_seconds",
			Help: "From an attempt's start to the endpoint's answer.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}),
		inHand: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_webhook_events_in_hand",
			Help: "Events this notifier has read and not yet delivered or dead-lettered."}),
		disabledTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_webhooks_disabled_total",
			Help: "Webhooks this notifier disabled because their endpoint failed every attempt for too long."}),
	}
	if reg != nil {
		reg.MustRegister(n.delivered, n.latency, n.inHand, n.disabledTotal)
	}
	return n
}

// instances numbers the notifiers of one process without an instance name.
var instances atomic.Int64

// UnitOf is the unit subscription id belongs to.
func UnitOf(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % Units)
}

// Healthy returns why the notifier cannot deliver now, or nil.
func (n *Notifier) Healthy() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.leases == nil {
		return errors.New("notifier starting")
	}
	select {
	case <-n.leases.Started():
	default:
		return errors.New("notifier taking its units")
	}
	ids := make([]string, 0, len(n.failing))
	for id := range n.failing {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) > 0 {
		return fmt.Errorf("webhook %s cannot read its events: %w", ids[0], n.failing[ids[0]])
	}
	return nil
}

// Units are the units this notifier holds now.
func (n *Notifier) Units() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.leases == nil {
		return nil
	}
	return n.leases.Held()
}

// Run watches the subscriptions, takes this instance's share of the units
// and delivers their events until ctx ends.
func (n *Notifier) Run(ctx context.Context) error {
	kv, err := n.js.KeyValue(ctx, broker.BucketWebhooks)
	if err != nil {
		return fmt.Errorf("the webhooks bucket: %w", err)
	}
	n.store = NewStore(kv)
	if n.retries, err = n.js.KeyValue(ctx, broker.BucketRetries); err != nil {
		return fmt.Errorf("the webhook retries bucket: %w", err)
	}
	watcher, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watching the webhooks: %w", err)
	}
	defer watcher.Stop() //nolint:errcheck
	loaded := make(chan struct{})
	go n.watch(ctx, watcher, loaded)
	// every subscription known before any unit is taken: a consumer whose
	// subscription is not yet read would be taken for an orphan
	select {
	case <-loaded:
	case <-ctx.Done():
		return nil
	}
	leases, err := n.js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		return fmt.Errorf("the leases bucket: %w", err)
	}
	mgr, err := lease.New(ctx, leases, lease.Config{Role: broker.RoleNotifier, Instance: n.cfg.Instance, Partitions: Units}, n.log)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.leases = mgr
	n.mu.Unlock()
	return mgr.Run(ctx, n.own)
}

// watch keeps subs as the bucket has them.
func (n *Notifier) watch(ctx context.Context, w jetstream.KeyWatcher, loaded chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				close(loaded) // the initial values are in
				continue
			}
			n.mu.Lock()
			if e.Operation() == jetstream.KeyValuePut {
				if sub, err := decode(e.Value()); err == nil {
					n.subs[e.Key()] = sub
				} else {
					n.log.Error("a webhook that is not one", zap.String("id", e.Key()), zap.Error(err))
				}
			} else {
				delete(n.subs, e.Key())
			}
			close(n.changed)
			n.changed = make(chan struct{})
			n.mu.Unlock()
		}
	}
}

// unitSubs are the subscriptions of unit u, and a channel closed at their
// next change.
func (n *Notifier) unitSubs(u int) (map[string]*Subscription, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]*Subscription{}
	for id, s := range n.subs {
		if UnitOf(id) == u {
			out[id] = s
		}
	}
	return out, n.changed
}

// running is a subscription's delivery, as started.
type running struct {
	sub    atomic.Pointer[Subscription] // its latest: secrets and state change while it runs
	cancel context.CancelFunc
	done   chan struct{}
}

// own delivers the subscriptions of a unit while its lease holds: one
// delivery per enabled subscription, started again when it changes; the
// consumers of deleted subscriptions of the unit are deleted.
func (n *Notifier) own(ctx context.Context, l *lease.Lease) {
	run := map[string]*running{}
	stop := func(id string) {
		r := run[id]
		r.cancel()
		<-r.done
		delete(run, id)
	}
	telling := map[string]chan struct{}{} // disablings being told to the log, by webhook
	defer func() {
		for id := range run {
			stop(id)
		}
		for _, done := range telling {
			<-done
		}
	}()
	for {
		subs, changed := n.unitSubs(l.Partition)
		for id, done := range telling {
			select {
			case <-done:
				delete(telling, id) // told, or to be told again on the next change
			default:
			}
		}
		for id, s := range subs {
			if _, busy := telling[id]; busy || !untold(s) {
				continue
			}
			done := make(chan struct{})
			telling[id] = done
			go func() {
				defer close(done)
				n.tell(ctx, s)
			}()
		}
		for id, r := range run {
			if s, ok := subs[id]; !ok || !s.Enabled || !sameDelivery(s, r.sub.Load()) {
				stop(id)
			} else {
				r.sub.Store(s) // secrets and state: read at each attempt
			}
		}
		n.dropOrphans(ctx, l.Partition, subs) // once the deliveries of those gone have ended
		for id, s := range subs {
			if _, ok := run[id]; ok || !s.Enabled {
				continue
			}
			rctx, cancel := context.WithCancel(ctx)
			r := &running{cancel: cancel, done: make(chan struct{})}
			r.sub.Store(s)
			run[id] = r
			go func() {
				defer close(r.done)
				n.deliverAll(rctx, l, r)
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// sameDelivery: what the consumer and the delivery depend on is unchanged.
func sameDelivery(a, b *Subscription) bool {
	return a.URL == b.URL && a.AccountID == b.AccountID && a.Parallel == b.Parallel &&
		strings.Join(a.EventTypes, " ") == strings.Join(b.EventTypes, " ") && a.StartTime.Equal(b.StartTime) &&
		replayID(a) == replayID(b)
}

func replayID(s *Subscription) string {
	if s.Replay == nil {
		return ""
	}
	return s.Replay.ID
}

// dropOrphans deletes the consumers on EVENTS of unit u that no
// subscription of subs owns: of a subscription deleted, or made again
// under the same id (a consumer per generation: the new one starts where
// it says, not where the old one was), and the dead letters of an id no
// longer there.
func (n *Notifier) dropOrphans(ctx context.Context, u int, subs map[string]*Subscription) {
	st, err := n.js.Stream(ctx, broker.StreamEvents)
	if err != nil {
		return
	}
	names := st.ConsumerNames(ctx)
	var orphans []string
	for name := range names.Name() {
		id, ok := consumerID(name)
		if !ok || UnitOf(id) != u {
			continue
		}
		if s, there := subs[id]; !there || ConsumerName(s) != name {
			orphans = append(orphans, name)
		}
	}
	for _, name := range orphans {
		if err := n.js.DeleteConsumer(ctx, broker.StreamEvents, name); err == nil {
			n.log.Info("deleted the consumer of a webhook deleted or made again", zap.String("consumer", name))
		}
		if id, _ := consumerID(name); subs[id] == nil {
			dead, err := n.js.Stream(ctx, broker.StreamDead)
			if err == nil {
				err = dead.Purge(ctx, jetstream.WithPurgeSubject(broker.DeadSubject(id)))
			}
			if err != nil {
				n.log.Warn("purging a deleted webhook's dead letters", zap.String("webhook", id), zap.Error(err))
			}
		}
	}
}

func (n *Notifier) setFailing(id string, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err == nil {
		delete(n.failing, id)
	} else {
		n.failing[id] = err
	}
}

// deliverAll delivers a subscription's events while ctx lasts, starting
// again after a backoff when its consumer cannot be read.
func (n *Notifier) deliverAll(ctx context.Context, l *lease.Lease, r *running) {
	id := r.sub.Load().ID
	defer n.setFailing(id, nil)
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		err := n.consume(ctx, l, r)
		if ctx.Err() != nil {
			return
		}
		n.setFailing(id, err)
		wait := bo.NextBackOff()
		n.log.Warn("webhook delivery stopped; starting again", zap.String("webhook", id), zap.Error(err), zap.Duration("in", wait))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// consume is one life of a subscription's delivery: make or update its
// consumer, send the events a previous owner left unacknowledged again
// in order, then deliver event after event, each card's in order and up
// to Parallel cards at once.
func (n *Notifier) consume(ctx context.Context, l *lease.Lease, r *running) error {
	sub := r.sub.Load()
	name := ConsumerName(sub)
	cons, err := n.js.CreateOrUpdateConsumer(ctx, broker.StreamEvents, jetstream.ConsumerConfig{
		Durable: name, Description: "webhook " + sub.ID, FilterSubjects: sub.FilterSubjects(),
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &sub.StartTime,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxAckPending: maxAckPending, MaxDeliver: -1,
	})
	if err != nil {
		return fmt.Errorf("the consumer %s: %w", name, err)
	}
	// messages a previous owner had in hand come back after the ack wait,
	// behind newer ones: reset to the first one not acknowledged, so that
	// each card's events go out in order (those acknowledged past it go
	// again, with the same webhook-id)
	// events up to here may have been tried before (their retry windows
	// run from then): a reset sets their delivery counts back to one
	// (a failure ends this life: not reset, they would come back behind
	// newer ones)
	var triedUpTo uint64
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("reading the consumer %s: %w", name, err)
	}
	if info.NumAckPending > 0 {
		triedUpTo = info.Delivered.Stream
		if _, err := n.js.ResetConsumer(ctx, broker.StreamEvents, name); err != nil {
			return fmt.Errorf("setting the consumer %s back to its first unacknowledged event: %w", name, err)
		}
	}
	if sub.ReplayPending() {
		if err := n.replay(ctx, l, r, name); err != nil {
			return err
		}
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return err
	}
	defer it.Stop()
	n.setFailing(sub.ID, nil)
	parallel := sub.Parallel
	if parallel == 0 {
		parallel = DefaultParallel
	}
	return lanes.Drain(ctx, it, parallel, ackWait/3, func(ctx context.Context, m jetstream.Msg) bool { return n.deliver(ctx, l, r, m, triedUpTo) },
		l.Valid, func(delta int) { n.inHand.Add(float64(delta)) })
}

// subjectToken is an event subject's last token: its card (or account).
func subjectToken(s string) string {
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// envelope is what the notifier reads of an event.
type envelope struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Data struct {
		AccountID string `json:"account_id"`
	} `json:"data"`
}

// Attempt is one delivery attempt, as GET /v1/webhooks/{id}/deliveries
// lists them.
type Attempt struct {
	EventID   string     `json:"event_id"`
	EventType string     `json:"event_type"`
	Subject   string     `json:"subject"`
	Attempt   int        `json:"attempt"`
	At        time.Time  `json:"at"`
	Status    int        `json:"status,omitempty"` // the endpoint's HTTP status; 0: no answer
	LatencyMS float64    `json:"latency_ms"`
	Error     string     `json:"error,omitempty"`
	Result    string     `json:"result"`             // delivered, failed, dead
	NextTry   *time.Time `json:"next_try,omitempty"` // when failed: the next attempt
}

// deliver sends one event until the endpoint takes it (then acknowledges
// it), or its retry window passes (then it goes to the dead letters and
// is acknowledged). It returns false when it stopped without either:
// ctx ended, or the lease is no longer valid.
func (n *Notifier) deliver(ctx context.Context, l *lease.Lease, r *running, m jetstream.Msg, triedUpTo uint64) bool {
	var env envelope
	if err := json.Unmarshal(m.Data(), &env); err != nil || env.ID == "" {
		n.log.Error("an event that is not one; skipped", zap.String("subject", m.Subject()), zap.Error(err))
		_ = m.Ack()
		return true
	}
	sub := r.sub.Load()
	if !sub.Matches(env.Type) || (sub.AccountID != "" && env.Data.AccountID != sub.AccountID) {
		n.delivered.WithLabelValues("skipped").Inc()
		_ = m.Ack()
		return true
	}
	subject := subjectToken(m.Subject())
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(time.Second), backoff.WithMaxInterval(n.cfg.MaxInterval),
		backoff.WithMaxElapsedTime(0), backoff.WithRandomizationFactor(0.5))
	first, known := n.firstAttempt(ctx, sub, env.ID, m, triedUpTo)
	outcome := func() { // delivered or dead: its first attempt is no longer needed
		if known {
			n.forgetAttempt(sub, env.ID)
		}
	}
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil || !l.Valid() {
			return false
		}
		sub = r.sub.Load() // its secrets as last read
		start := time.Now()
		status, retryAfter, err := n.post(ctx, sub, env.ID, m.Data())
		elapsed := time.Since(start)
		n.latency.Observe(elapsed.Seconds())
		a := Attempt{EventID: env.ID, EventType: env.Type, Subject: subject, Attempt: attempt, At: start, Status: status,
			LatencyMS: float64(elapsed.Microseconds()) / 1000}
		if err == nil {
			a.Result = "delivered"
			n.record(sub.ID, a)
			n.delivered.WithLabelValues("delivered").Inc()
			_ = m.Ack()
			outcome()
			n.succeeded(ctx, sub)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		a.Error = err.Error()
		wait := bo.NextBackOff()
		if retryAfter > 0 {
			wait = min(retryAfter, MaxRetryAfter)
		}
		next := time.Now().Add(wait)
		if next.Sub(first) > n.cfg.RetryFor {
			a.Result = "dead"
			n.record(sub.ID, a)
			if n.deadLetter(ctx, sub, m, env.ID, err, attempt, first) {
				n.delivered.WithLabelValues("dead").Inc()
				_ = m.Ack()
				outcome()
				return true
			}
			return false
		}
		a.Result, a.NextTry = "failed", &next
		if !known {
			known = n.rememberAttempt(ctx, sub, env.ID, first)
		}
		n.record(sub.ID, a)
		n.delivered.WithLabelValues("failed").Inc()
		n.failed(ctx, sub, start)
		n.log.Info("webhook attempt failed", zap.String("webhook", sub.ID), zap.String("event", env.ID), zap.Int("attempt", attempt),
			zap.Int("status", status), zap.Error(err), zap.Duration("retry_in", wait))
		// wait without holding a slot: other cards go on meanwhile (the
		// lanes say the event is still in hand)
		if lanes.Pause(ctx, time.Until(next)) != nil {
			return false
		}
	}
}

// headerConsumer names, on a dead letter, the consumer (the webhook's
// generation) it was delivered from.
const headerConsumer = "Cardmeter-Consumer"

// MaxRetryAfter bounds the wait an endpoint's Retry-After asks for (the
// retry window bounds it too: past it the event is dead-lettered).
const MaxRetryAfter = time.Hour

// retryKey names an event's first attempt in the retries bucket.
func retryKey(sub *Subscription, eventID string) string { return ConsumerName(sub) + "." + eventID }

// firstAttempt is when an event was first tried: now, unless it was
// delivered before (a previous life, another notifier: its delivery count
// says so, or it is at or before triedUpTo, where the consumer had
// delivered to before it was reset) and failed then.
// known says the retries bucket has it.
func (n *Notifier) firstAttempt(ctx context.Context, sub *Subscription, eventID string, m jetstream.Msg, triedUpTo uint64) (time.Time, bool) {
	now := time.Now()
	if meta, err := m.Metadata(); err != nil || (meta.NumDelivered <= 1 && meta.Sequence.Stream > triedUpTo) {
		return now, false
	}
	e, err := n.retries.Get(ctx, retryKey(sub, eventID))
	if err != nil {
		return now, false
	}
	ns, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if err != nil {
		return now, false
	}
	return time.Unix(0, ns), true
}

// rememberAttempt writes an event's first attempt at its first failure,
// so that its retry window outlives a restart or a hand-over.
func (n *Notifier) rememberAttempt(ctx context.Context, sub *Subscription, eventID string, first time.Time) bool {
	_, err := n.retries.Put(ctx, retryKey(sub, eventID), []byte(strconv.FormatInt(first.UnixNano(), 10)))
	return err == nil
}

// forgetAttempt removes an event's first attempt once it has an outcome
// (the bucket's time to live removes what a crash leaves).
func (n *Notifier) forgetAttempt(sub *Subscription, eventID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.retries.Purge(ctx, retryKey(sub, eventID))
}

// post sends an event once: a 2xx within the timeout is success. It
// returns the status, a Retry-After asked for (429 and 503), and why it
// failed.
func (n *Notifier) post(ctx context.Context, sub *Subscription, id string, body []byte) (int, time.Duration, error) {
	ts := time.Now()
	var sigs []string
	for _, secret := range sub.Signing(ts) {
		sig, err := Sign(secret, id, ts, body)
		if err != nil {
			return 0, 0, err
		}
		sigs = append(sigs, sig)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sub.URL, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cardmeter-webhooks/1")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", strings.Join(sigs, " "))
	resp, err := n.client.Do(req)
	if err != nil {
		// without the URL: its path or query may hold a token, and the
		// error goes to logs, attempts and dead letters
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return 0, 0, fmt.Errorf("posting: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, 0, nil
	}
	var retryAfter time.Duration
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return resp.StatusCode, retryAfter, fmt.Errorf("the endpoint answered %d", resp.StatusCode)
}

// maxRetryAfter bounds a Retry-After in seconds (a year): the wait is
// bounded by MaxInterval anyway.
const maxRetryAfter = 365 * 24 * 3600

// parseRetryAfter reads Retry-After: seconds, or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(min(s, maxRetryAfter)) * time.Second // no overflow
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// record publishes an attempt for operators (not waited for: the attempts
// are not the truth, and a lost one loses no event).
func (n *Notifier) record(id string, a Attempt) {
	b, _ := json.Marshal(a)
	if _, err := n.js.PublishAsync(broker.AttemptsSubject(id), b); err != nil {
		n.log.Debug("recording a webhook attempt", zap.Error(err))
	}
}

// deadLetter stores an event its endpoint did not take in time, with why,
// and reports whether it is stored.
func (n *Notifier) deadLetter(ctx context.Context, sub *Subscription, m jetstream.Msg, id string, cause error, attempts int, first time.Time) bool {
	msg := nats.NewMsg(broker.DeadSubject(sub.ID))
	msg.Data = m.Data()
	// kept once if stored again after a crash (the same first attempt),
	// again if the event dies again after a replay
	msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s.%s.%d", ConsumerName(sub), id, first.UnixNano()))
	msg.Header.Set("webhook-id", id)
	// the webhook's generation: a webhook deleted and made again under
	// the same id does not get the letters of the one before
	msg.Header.Set(headerConsumer, ConsumerName(sub))
	msg.Header.Set("Cardmeter-Event-Subject", m.Subject())
	msg.Header.Set("Cardmeter-Error", cause.Error())
	msg.Header.Set("Cardmeter-Attempts", strconv.Itoa(attempts))
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := n.js.PublishMsg(pctx, msg); err != nil {
		n.log.Warn("storing a dead letter (the event stays in hand)", zap.String("webhook", sub.ID), zap.String("event", id), zap.Error(err))
		return false
	}
	n.log.Warn("webhook event dead-lettered after its retry window", zap.String("webhook", sub.ID), zap.String("event", id),
		zap.Int("attempts", attempts), zap.Error(cause))
	return true
}

// failed notes a failed attempt on the subscription: when its failures
// began, and past DisableAfter of nothing but failures, it is disabled.
func (n *Notifier) failed(ctx context.Context, sub *Subscription, at time.Time) {
	if sub.FailingSince != nil && at.Sub(*sub.FailingSince) < n.cfg.DisableAfter {
		return // nothing new to write
	}
	disabled := false
	updated, err := n.store.Update(ctx, sub.ID, func(s *Subscription) error {
		disabled = false
		switch {
		case s.FailingSince == nil:
			s.FailingSince = &at
		case at.Sub(*s.FailingSince) >= n.cfg.DisableAfter && s.Enabled:
			s.Enabled, disabled = false, true
			s.DisabledReason = fmt.Sprintf("every attempt failed since %s", s.FailingSince.UTC().Format(time.RFC3339))
		default:
			return errNothing
		}
		s.UpdatedAt = at
		return nil
	})
	if err != nil && !errors.Is(err, errNothing) {
		n.log.Warn("writing a webhook's failures", zap.String("webhook", sub.ID), zap.Error(err))
		return
	}
	if disabled {
		n.disabledTotal.Inc()
		n.log.Error("webhook disabled: its endpoint failed every attempt", zap.String("webhook", sub.ID), zap.String("reason", updated.DisabledReason))
		// the unit's owner sees the change and tells the log (tell)
	}
}

// untold: the notifier disabled the webhook and the log has not been told.
func untold(s *Subscription) bool {
	return !s.Enabled && s.DisabledReason != "" && !s.DisabledLogged && s.FailingSince != nil
}

// tell writes to the log that a webhook was disabled, for the fold to
// emit cardmeter.webhook.disabled.v1, then marks the subscription told.
// Until the mark is stored, each owner of the webhook's unit tells it
// again (a crash between the two): the message id makes a repeat within
// the stream's duplicate window harmless.
func (n *Notifier) tell(ctx context.Context, sub *Subscription) {
	if n.cfg.Partitions <= 0 {
		return
	}
	in := card.Input{Type: card.TypeWebhookDisabled, ID: fmt.Sprintf("webhook-disabled-%s-%d", sub.ID, sub.FailingSince.Unix()), At: sub.UpdatedAt.Unix(),
		Webhook: &card.WebhookNotice{WebhookID: sub.ID, Reason: sub.DisabledReason}}
	b, _ := json.Marshal(in)
	m := nats.NewMsg(broker.OutcomeSubject(broker.Partition(sub.ID, n.cfg.Partitions)))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, in.ID)
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxInterval(time.Minute), backoff.WithMaxElapsedTime(0)), ctx)
	err := backoff.Retry(func() error {
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := n.js.PublishMsg(pctx, m); err != nil {
			n.log.Warn("telling the log a webhook was disabled; trying again", zap.String("webhook", sub.ID), zap.Error(err))
			return err
		}
		_, err := n.store.Update(pctx, sub.ID, func(s *Subscription) error {
			if !untold(s) {
				return errNothing
			}
			s.DisabledLogged = true
			return nil
		})
		if errors.Is(err, errNothing) || errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		return err
	}, bo)
	if err != nil && ctx.Err() == nil {
		n.log.Error("telling the log a webhook was disabled", zap.String("webhook", sub.ID), zap.Error(err))
	}
}

// succeeded clears a subscription's failures.
func (n *Notifier) succeeded(ctx context.Context, sub *Subscription) {
	if sub.FailingSince == nil {
		return
	}
	_, err := n.store.Update(ctx, sub.ID, func(s *Subscription) error {
		if s.FailingSince == nil {
			return errNothing
		}
		s.FailingSince = nil
		return nil
	})
	if err != nil && !errors.Is(err, errNothing) {
		n.log.Warn("clearing a webhook's failures", zap.String("webhook", sub.ID), zap.Error(err))
	}
}

var errNothing = errors.New("nothing to change")
