package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/app"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// WebhookConfig configures the webhook figure.
type WebhookConfig struct {
	Dir   string
	Rate  int           // events published per second for the latency figure (1,000)
	For   time.Duration // how long at that rate
	Burst int           // events published at once for the delivery rate
	Cards int           // cards the events are about (each card's in order)
	Log   io.Writer
}

// WebhookReport holds the webhook figures.
type WebhookReport struct {
	Rate                 int
	Reached              float64 // events published per second, as reached
	Events               int
	P50, P99, Max        time.Duration // from the event's publish to the receiver's 2xx
	BurstEvents          int
	BurstPerSec          float64 // a backlog of BurstEvents delivered per second
	BurstStoredPerSec    float64 // the backlog stored per second, before
	Misordered, Unsigned int
}

// Webhooks measures the notifier against a local receiver: latency from
// an event's publish on EVENTS to the receiver's 2xx at a steady rate of
// stops, resumes and warnings, then how fast a backlog is delivered.
func Webhooks(ctx context.Context, cfg WebhookConfig) (*WebhookReport, error) {
	if cfg.Rate == 0 {
		cfg.Rate = 1000
	}
	if cfg.For == 0 {
		cfg.For = 20 * time.Second
	}
	if cfg.Burst == 0 {
		cfg.Burst = 50000
	}
	if cfg.Cards == 0 {
		cfg.Cards = 10000
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", args...)
		}
	}
	dir := filepath.Join(cfg.Dir, "webhooks")
	_ = os.RemoveAll(dir)
	defer os.RemoveAll(dir) //nolint:errcheck // scratch
	p, err := app.Start(ctx, app.Config{Roles: []string{app.RoleNotifier}, DataDir: dir, NATSPort: -1,
		Notifier: webhook.Config{AllowPrivate: true}}, zap.NewNop())
	if err != nil {
		return nil, err
	}
	defer p.Stop()

	rcv := &latencies{published: map[string]time.Time{}, last: map[string]int{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	kv, err := p.JS.KeyValue(ctx, broker.BucketWebhooks)
	if err != nil {
		return nil, err
	}
	secret, _ := webhook.NewSecret()
	rcv.secret = secret
	sub := &webhook.Subscription{ID: "bench", URL: srv.URL, EventTypes: []string{"cardmeter.card.*", "cardmeter.usage.*"}, Enabled: true,
		Parallel: 32, StartTime: time.Now().Add(-time.Minute), CreatedAt: time.Now(), Secrets: []webhook.Secret{{Key: secret}}}
	if _, err := webhook.NewStore(kv).Put(ctx, sub, 0); err != nil {
		return nil, err
	}
	rep := &WebhookReport{Rate: cfg.Rate}
	n := 0
	publish := func(async bool) error {
		c := n % cfg.Cards
		kinds := []string{"card.stopped", "usage.warning", "card.resumed"}
		kind := kinds[(n/cfg.Cards)%3]
		iccid := fmt.Sprintf("8986%016d", c)
		id := fmt.Sprintf("bench-%d", n)
		b, _ := json.Marshal(map[string]any{"specversion": "1.0", "id": id, "source": "cardmeter/projector", "type": "cardmeter." + kind + ".v1",
			"subject": iccid, "time": "2026-03-10T00:00:00Z", "datacontenttype": "application/json",
			"data": map[string]any{"iccid": iccid, "account_id": "a", "cause": "bench", "seq": n}})
		m := nats.NewMsg(broker.EventSubject(kind, iccid))
		m.Data = b
		m.Header.Set(jetstream.MsgIDHeader, id)
		rcv.sent(id, iccid, n)
		n++
		if async {
			_, err := p.JS.PublishMsgAsync(m)
			return err
		}
		_, err := p.JS.PublishMsg(ctx, m)
		return err
	}
	// steady: Rate events a second, each stamped when published
	logf("webhooks: %d events/s for %s to a local receiver", cfg.Rate, cfg.For)
	tick := time.NewTicker(10 * time.Millisecond)
	start := time.Now()
	perTick := cfg.Rate / 100
	for time.Since(start) < cfg.For {
		<-tick.C
		for i := 0; i < perTick; i++ {
			if err := publish(false); err != nil {
				tick.Stop()
				return nil, err
			}
		}
	}
	tick.Stop()
	rep.Events = n
	rep.Reached = float64(n) / time.Since(start).Seconds() // a ticker on 2 busy cores may fall behind the asked rate
	if err := rcv.wait(ctx, n, time.Minute); err != nil {
		return nil, err
	}
	rep.P50, rep.P99, rep.Max = rcv.quantiles()
	logf("  latency p50 %s, p99 %s, max %s", rep.P50, rep.P99, rep.Max)
	// a backlog: Burst events stored first, then a webhook made to take
	// them all (its start before them), delivered as fast as the notifier
	// can; the first webhook is gone by then
	store := webhook.NewStore(kv)
	if err := store.Delete(ctx, "bench"); err != nil {
		return nil, err
	}
	// its delivery ended (the notifier deletes its consumer then), so that
	// none of the backlog goes through it
	gone := time.Now().Add(time.Minute)
	for {
		_, err := p.JS.Consumer(ctx, broker.StreamEvents, webhook.ConsumerName(sub))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			break
		}
		if time.Now().After(gone) {
			return nil, fmt.Errorf("the first webhook's consumer is still there a minute after its deletion (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	first := n
	backlogStart := time.Now().Add(-time.Second)
	pstart := time.Now()
	for i := 0; i < cfg.Burst; i++ {
		if err := publish(true); err != nil {
			return nil, err
		}
		if i%1000 == 999 || i == cfg.Burst-1 {
			select {
			case <-p.JS.PublishAsyncComplete():
			case <-time.After(time.Minute):
				return nil, fmt.Errorf("the backlog was not stored within a minute")
			}
		}
	}
	rep.BurstStoredPerSec = float64(n-first) / time.Since(pstart).Seconds()
	rcv.mu.Lock()
	rcv.got, rcv.last = 0, map[string]int{}
	rcv.mu.Unlock()
	backlog := *sub
	backlog.ID, backlog.StartTime = "backlog", backlogStart
	bstart := time.Now()
	if _, err := store.Put(ctx, &backlog, 0); err != nil {
		return nil, err
	}
	if err := rcv.wait(ctx, n-first, 5*time.Minute); err != nil {
		return nil, err
	}
	rep.BurstEvents = n - first
	rep.BurstPerSec = float64(rep.BurstEvents) / time.Since(bstart).Seconds()
	rep.Misordered, rep.Unsigned = rcv.misordered, rcv.unsigned
	logf("  a backlog of %d: %.0f delivered/s", rep.BurstEvents, rep.BurstPerSec)
	return rep, nil
}

// latencies is the receiver: it verifies each delivery, checks each
// card's order, and keeps the time from publish to its answer.
type latencies struct {
	mu         sync.Mutex
	secret     string
	published  map[string]time.Time // event id -> when published
	seqOf      sync.Map             // event id -> its number
	last       map[string]int       // card -> last number taken
	lat        []time.Duration
	got        int
	misordered int
	unsigned   int
}

func (l *latencies) sent(id, card string, n int) {
	l.mu.Lock()
	l.published[id] = time.Now()
	l.mu.Unlock()
	l.seqOf.Store(id, n)
}

func (l *latencies) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get("webhook-id")
	err := webhook.Verify(l.secret, id, r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, time.Now(), time.Minute)
	var env struct {
		Subject string `json:"subject"`
	}
	_ = json.Unmarshal(body, &env)
	n, _ := l.seqOf.Load(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.unsigned++
	}
	if t, ok := l.published[id]; ok {
		l.lat = append(l.lat, time.Since(t))
		delete(l.published, id)
		l.got++
		if seq, ok := n.(int); ok {
			if prev, seen := l.last[env.Subject]; seen && seq < prev {
				l.misordered++
			}
			l.last[env.Subject] = seq
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (l *latencies) wait(ctx context.Context, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		got := l.got
		l.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("webhooks: %d of %d events delivered in %s", l.got, n, within)
}

func (l *latencies) quantiles() (p50, p99, most time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := append([]time.Duration(nil), l.lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0, 0, 0
	}
	return s[len(s)/2], s[len(s)*99/100], s[len(s)-1]
}

// Print writes the webhook figures.
func (r *WebhookReport) Print(w io.Writer) {
	fmt.Fprintf(w, "| webhook latency, publish on EVENTS to the receiver's 2xx, %.0f events/s reached of %d asked (stops, warnings, resumes; %d events) | p50 %s, p99 %s, max %s |\n",
		r.Reached, r.Rate, r.Events, r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond))
	fmt.Fprintf(w, "| webhook delivery rate: a backlog of %d events (stored first, at %.0f/s), from the webhook's creation to the last 2xx | %.0f events/s |\n", r.BurstEvents, r.BurstStoredPerSec, r.BurstPerSec)
	fmt.Fprintf(w, "| out of order per card / signatures not verified | %d / %d |\n", r.Misordered, r.Unsigned)
}
