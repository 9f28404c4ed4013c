package actuate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
	"github.com/cardmeter/cardmeter/pkg/query"
)

// ActuatorConfig configures the actuator.
type ActuatorConfig struct {
	Instance   string
	Partitions int               // the log's: outcomes go to the card's account's partition
	Drivers    map[string]Driver // by carrier
	// RetryFor is how long an action is retried before it is reported
	// failed; default 1 h.
	RetryFor time.Duration
	// MaxInterval bounds the wait between two tries; default 1 min.
	MaxInterval time.Duration
	Parallel    int // cards acted on at once; default 16
	// ReconcileEvery, when set, reconciles every carrier whose driver
	// lists its cards that often, mending the drift, and reports it (a
	// gauge, and carrier.drift_detected.v1 through the log).
	ReconcileEvery time.Duration
}

// actuatorMaxAckPending bounds the actions in hand: those waiting to
// retry at a carrier that is down hold no slot, so other carriers' go on
// until this many are waiting.
const actuatorMaxAckPending = 10000

// ConsumerName is the actuator's durable consumer on EVENTS.
const ConsumerName = "actuator"

// Actuator acts on the carriers while it holds the one actuator lease.
type Actuator struct {
	cfg     ActuatorConfig
	js      jetstream.JetStream
	log     *zap.Logger
	dir     jetstream.KeyValue
	started atomic.Bool
	failure atomic.Pointer[error]

	outcomes  *prometheus.CounterVec
	drift     *prometheus.GaugeVec
	lastDrift sync.Map // carrier -> the drift last told to the log
	refused   sync.Map // carrier -> error: it refuses the credentials
}

// NewActuator makes an actuator; Run runs it.
func NewActuator(js jetstream.JetStream, cfg ActuatorConfig, reg prometheus.Registerer, log *zap.Logger) *Actuator {
	if cfg.RetryFor == 0 {
		cfg.RetryFor = time.Hour
	}
	if cfg.MaxInterval == 0 {
		cfg.MaxInterval = time.Minute
	}
	if cfg.Parallel == 0 {
		cfg.Parallel = 16
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	a := &Actuator{cfg: cfg, js: js, log: log,
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_actuations_total",
			Help: "Actions sent to carriers, by carrier, action and result (succeeded, failed, skipped: no driver)."}, []string{"carrier", "action", "result"}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cardmeter_carrier_drift_cards",
			Help: "Cards whose carrier state differed from cardmeter's at the last reconciliation, by carrier and kind."}, []string{"carrier", "kind"})}
	if reg != nil {
		reg.MustRegister(a.outcomes, a.drift)
	}
	return a
}

// Healthy returns why the actuator cannot act now, or nil.
func (a *Actuator) Healthy() error {
	if !a.started.Load() {
		return errors.New("actuator starting")
	}
	if e := a.failure.Load(); e != nil && *e != nil {
		return *e
	}
	var refused error
	a.refused.Range(func(k, v any) bool {
		refused = fmt.Errorf("carrier %s: %w", k, v.(error))
		return false
	})
	return refused
}

// Run takes the actuator lease when it is free and acts until ctx ends.
func (a *Actuator) Run(ctx context.Context) error {
	var err error
	if a.dir, err = a.js.KeyValue(ctx, broker.BucketDir); err != nil {
		return fmt.Errorf("the directory: %w", err)
	}
	leases, err := a.js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		return fmt.Errorf("the leases bucket: %w", err)
	}
	mgr, err := lease.New(ctx, leases, lease.Config{Role: broker.RoleActuator, Instance: a.cfg.Instance, Partitions: 1}, a.log)
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-mgr.Started():
			a.started.Store(true)
		case <-ctx.Done():
		}
	}()
	return mgr.Run(ctx, a.own)
}

// own acts while the lease holds, a life after another after a backoff,
// and reconciles the carriers when told to.
func (a *Actuator) own(ctx context.Context, l *lease.Lease) {
	if a.cfg.ReconcileEvery > 0 {
		go a.reconcileEvery(ctx, l)
	}
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		err := a.consume(ctx, l)
		if ctx.Err() != nil {
			return
		}
		a.failure.Store(&err)
		wait := bo.NextBackOff()
		a.log.Warn("actuator stopped; starting again", zap.Error(err), zap.Duration("in", wait))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// Filters are the events the actuator acts on.
var Filters = []string{
	broker.EventSubject("card.stopped", "*"), broker.EventSubject("card.resumed", "*"), broker.EventSubject("card.cancelled", "*"),
	broker.EventSubject("card.resync_requested", "*"),
}

func (a *Actuator) consume(ctx context.Context, l *lease.Lease) error {
	// the first actuator acts on what happens from then on, not on the
	// whole history
	cons, err := a.js.CreateOrUpdateConsumer(ctx, broker.StreamEvents, jetstream.ConsumerConfig{
		Durable: ConsumerName, Description: "carrier actuation", FilterSubjects: Filters, DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxAckPending: actuatorMaxAckPending, MaxDeliver: -1,
	})
	if err != nil {
		return fmt.Errorf("the consumer %s: %w", ConsumerName, err)
	}
	// a previous owner's unacknowledged actions first, in order
	// (not reset, they would come back after the ack wait behind newer
	// ones: an old stop after a resume; so a failure ends this life)
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("reading the consumer %s: %w", ConsumerName, err)
	}
	if info.NumAckPending > 0 {
		if _, err := a.js.ResetConsumer(ctx, broker.StreamEvents, ConsumerName); err != nil {
			return fmt.Errorf("setting the consumer %s back to its first unacknowledged event: %w", ConsumerName, err)
		}
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return err
	}
	defer it.Stop()
	var none error
	a.failure.Store(&none)
	return lanes.Drain(ctx, it, a.cfg.Parallel, 20*time.Second, func(ctx context.Context, m jetstream.Msg) bool { return a.act(ctx, l, m) },
		l.Valid, nil)
}

// event is what the actuator reads of an event.
type event struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Data struct {
		ICCID       string   `json:"iccid"`
		AccountID   string   `json:"account_id"`
		StopReasons []string `json:"stop_reasons"`
		Action      string   `json:"action"` // resyncs: what the card's state needs
	} `json:"data"`
}

// directoryCard is a card's entry in the directory bucket.
type directoryCard struct {
	AccountID string `json:"account_id"`
	Carrier   string `json:"carrier"`
	IMSI      string `json:"imsi"`
	MSISDN    string `json:"msisdn"`
}

// act sends one event's action to the card's carrier until it succeeds,
// is refused for good, or RetryFor passes, then writes the outcome into
// the log and acknowledges the event. It returns false when it stopped
// without an outcome (ctx ended, or the lease is not valid).
func (a *Actuator) act(ctx context.Context, l *lease.Lease, m jetstream.Msg) bool {
	var ev event
	if err := json.Unmarshal(m.Data(), &ev); err != nil || ev.Data.ICCID == "" {
		a.log.Error("an event that is not one; skipped", zap.String("subject", m.Subject()), zap.Error(err))
		_ = m.Ack()
		return true
	}
	act := Action{ICCID: ev.Data.ICCID, AccountID: ev.Data.AccountID, Reasons: ev.Data.StopReasons, EventID: ev.ID}
	switch ev.Type {
	case "cardmeter.card.stopped.v1":
		act.Kind = "stop"
	case "cardmeter.card.resumed.v1":
		act.Kind = "resume"
	case "cardmeter.card.cancelled.v1":
		act.Kind = "cancel"
	case "cardmeter.card.resync_requested.v1":
		act.Kind = ev.Data.Action // the state's action, at this place in the card's history
	default:
		_ = m.Ack()
		return true
	}
	dc, ok := a.directory(ctx, act.ICCID)
	if !ok {
		return false // ctx ended: the event comes back to the next reader
	}
	if act.AccountID == "" {
		act.AccountID = dc.AccountID
	}
	act.IMSI, act.MSISDN = dc.IMSI, dc.MSISDN
	drv, ok := a.cfg.Drivers[dc.Carrier]
	if !ok {
		a.outcomes.WithLabelValues(dc.Carrier, act.Kind, "skipped").Inc()
		_ = m.Ack() // no driver for this carrier: nothing to do
		return true
	}
	first := time.Now()
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(time.Second), backoff.WithMaxInterval(a.cfg.MaxInterval), backoff.WithMaxElapsedTime(0))
	var detail string
	var err error
	attempts := 0
	for {
		if ctx.Err() != nil || !l.Valid() {
			return false
		}
		attempts++
		detail, err = drv.Do(ctx, act)
		if errors.Is(err, ErrCredentials) {
			a.refused.Store(dc.Carrier, err)
		} else {
			a.refused.Delete(dc.Carrier)
		}
		var perm *backoff.PermanentError
		if err == nil || errors.As(err, &perm) {
			break
		}
		wait := bo.NextBackOff()
		if time.Since(first)+wait > a.cfg.RetryFor {
			break
		}
		a.log.Info("carrier call failed; retrying", zap.String("iccid", act.ICCID), zap.String("action", act.Kind), zap.Error(err), zap.Duration("in", wait))
		// wait without holding a slot: other cards, of other carriers
		// too, go on meanwhile (the lanes say the event is still in hand)
		if lanes.Pause(ctx, wait) != nil {
			return false
		}
	}
	if errors.Is(err, ErrNotConfigured) {
		a.outcomes.WithLabelValues(dc.Carrier, act.Kind, "skipped").Inc()
		_ = m.Ack() // the carrier's driver has no call for this kind: not sent
		return true
	}
	rep := card.ActuationReport{ICCID: act.ICCID, Action: act.Kind, Carrier: dc.Carrier, OK: err == nil, Cause: "event:" + ev.ID, Detail: detail, Attempts: attempts}
	result := "succeeded"
	if err != nil {
		result, rep.Detail = "failed", err.Error()
	}
	a.outcomes.WithLabelValues(dc.Carrier, act.Kind, result).Inc()
	if !a.report(ctx, act.AccountID, rep) {
		return false
	}
	_ = m.Ack()
	return true
}

// directoryWait is how long a card missing from the directory is looked
// for again (the API writes the directory after the fold) before its
// event is left: a card the directory never had has no carrier to call.
const directoryWait = 2 * time.Minute

// directory reads a card's entry, retrying errors while ctx lasts and a
// missing entry for directoryWait; ok is false when ctx ended.
func (a *Actuator) directory(ctx context.Context, iccid string) (directoryCard, bool) {
	var dc directoryCard
	first := time.Now()
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(10*time.Second), backoff.WithMaxElapsedTime(0))
	for {
		if ctx.Err() != nil {
			return dc, false
		}
		e, err := a.dir.Get(ctx, "card."+iccid)
		switch {
		case err == nil:
			if err := json.Unmarshal(e.Value(), &dc); err != nil {
				a.log.Error("a directory entry that is not one", zap.String("iccid", iccid), zap.Error(err))
			}
			return dc, true
		case errors.Is(err, jetstream.ErrKeyNotFound) && time.Since(first) > directoryWait:
			a.log.Warn("a card not in the directory: no carrier to act on", zap.String("iccid", iccid))
			return dc, true
		case !errors.Is(err, jetstream.ErrKeyNotFound) && ctx.Err() == nil:
			a.log.Warn("reading the directory; retrying", zap.String("iccid", iccid), zap.Error(err))
		}
		if lanes.Pause(ctx, bo.NextBackOff()) != nil { // waiting holds no slot
			return dc, false
		}
	}
}

// report writes an outcome into the log, on the partition of the card's
// account; its id (from the event acted on) makes a repeat harmless.
func (a *Actuator) report(ctx context.Context, account string, rep card.ActuationReport) bool {
	in := card.Input{Type: card.TypeActuationReported, ID: "actuation-" + strings.TrimPrefix(rep.Cause, "event:"), At: time.Now().Unix(), Actuation: &rep}
	b, _ := json.Marshal(in)
	m := nats.NewMsg(broker.OutcomeSubject(broker.Partition(account, a.cfg.Partitions)))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, in.ID)
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(10*time.Second)), ctx)
	err := backoff.Retry(func() error {
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err := a.js.PublishMsg(pctx, m)
		return err
	}, bo)
	return err == nil // else ctx ended: the event comes back to the next owner
}

// reconcileEvery reconciles each carrier that lists its cards, every
// ReconcileEvery while the lease holds.
func (a *Actuator) reconcileEvery(ctx context.Context, l *lease.Lease) {
	a.lastDrift.Clear() // a new owner tells what it finds, whatever another told since
	t := time.NewTicker(a.cfg.ReconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// (a card whose action is in flight shows as drift; its resync
		// goes after that action, and the carrier is asked the same twice)
		for carrier, drv := range a.cfg.Drivers {
			if _, ok := drv.(StateReader); !ok || !l.Valid() {
				continue
			}
			now := time.Now()
			d, err := Reconcile(ctx, carrier, drv, a.projectorCards, func(ctx context.Context, c CardmeterCard, kind string) error {
				return a.resync(ctx, c, kind, now)
			})
			if err != nil {
				a.log.Warn("reconciling a carrier", zap.String("carrier", carrier), zap.Error(err))
				continue
			}
			a.reportDrift(ctx, d, now)
		}
	}
}

// resync writes to the log that a drifted card's state is to be sent to
// its carrier again (the fold emits card.resync_requested.v1, which this
// actuator then acts on in the card's order).
func (a *Actuator) resync(ctx context.Context, c CardmeterCard, kind string, at time.Time) error {
	in := card.Input{Type: card.TypeResyncRequested, ID: fmt.Sprintf("resync-%d-%s", at.UnixNano(), c.ICCID), At: at.Unix(),
		Resync: &card.ResyncRequest{ICCID: c.ICCID, Reason: "reconcile: " + kind, By: "actuator " + a.cfg.Instance}}
	b, _ := json.Marshal(in)
	m := nats.NewMsg(broker.OutcomeSubject(broker.Partition(c.AccountID, a.cfg.Partitions)))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, in.ID)
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err := a.js.PublishMsg(pctx, m)
	return err
}

// reportDrift sets the gauge and, when the drift changed (found, or gone),
// writes it to the log for the fold to emit carrier.drift_detected.v1.
func (a *Actuator) reportDrift(ctx context.Context, d *Drift, at time.Time) {
	counts := d.Counts()
	total := 0
	for _, kind := range DriftKinds {
		a.drift.WithLabelValues(d.Carrier, kind).Set(float64(counts[kind]))
		total += counts[kind]
	}
	a.log.Info("carrier reconciled", zap.String("carrier", d.Carrier), zap.Int("compared", d.Compared), zap.Any("drift", counts), zap.Int("resyncs", d.Sent))
	var cards []string
	for _, kind := range DriftKinds {
		for _, c := range d.Cards[kind] {
			if len(cards) < 100 {
				cards = append(cards, c)
			}
		}
	}
	// told when it changed: the same cards left drifted (a card the
	// carrier lists that cardmeter does not have) are one event, not one
	// each round
	seen := fmt.Sprint(counts, cards)
	if last, _ := a.lastDrift.Load(d.Carrier); last == seen || (last == nil && total == 0) {
		return
	}
	in := card.Input{Type: card.TypeDriftReported, ID: fmt.Sprintf("drift-%s-%d", d.Carrier, at.UnixNano()), At: at.Unix(),
		Drift: &card.DriftReport{Carrier: d.Carrier, Counts: counts, Cards: cards, Sent: d.Sent}}
	b, _ := json.Marshal(in)
	m := nats.NewMsg(broker.OutcomeSubject(broker.Partition(d.Carrier, a.cfg.Partitions)))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, in.ID)
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := a.js.PublishMsg(pctx, m); err != nil {
		a.log.Warn("writing the drift to the log (the gauge says it; the next round tells it again)", zap.String("carrier", d.Carrier), zap.Error(err))
		return
	}
	a.lastDrift.Store(d.Carrier, seen)
}

// projectorCards pages every card the projectors hold, partition after
// partition (cursor "<partition>:<last iccid>").
func (a *Actuator) projectorCards(ctx context.Context, cursor string) ([]CardmeterCard, string, error) {
	part, after := 0, ""
	if cursor != "" {
		p, rest, _ := strings.Cut(cursor, ":")
		fmt.Sscan(p, &part) //nolint:errcheck // our own cursor
		after = rest
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	const limit = 1000
	reply, err := query.Ask(qctx, a.js.Conn(), broker.QuerySubject(part), query.Request{Kind: query.KindCards, After: after, Limit: limit})
	if err != nil {
		return nil, "", err
	}
	if reply.Restoring || reply.Error != "" {
		return nil, "", fmt.Errorf("partition %d: restoring %v %s", part, reply.Restoring, reply.Error)
	}
	out := make([]CardmeterCard, 0, len(reply.Cards))
	for _, v := range reply.Cards {
		out = append(out, CardmeterCard{ICCID: v.ICCID, AccountID: v.AccountID, Carrier: v.Carrier, Status: string(v.Status), Reasons: v.Reasons.Names()})
	}
	switch {
	case len(reply.Cards) >= limit:
		return out, fmt.Sprintf("%d:%s", part, reply.Cards[len(reply.Cards)-1].ICCID), nil
	case part+1 < a.cfg.Partitions:
		return out, fmt.Sprintf("%d:", part+1), nil
	}
	return out, "", nil
}
