// Package api is cardmeter's public HTTP API (see schemas/openapi.yaml):
// it validates what carriers and billing send, writes it to the log and
// answers 2xx only once JetStream has stored it, and answers reads from
// the projector's state.
package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/clock"
	"github.com/cardmeter/cardmeter/pkg/console"
	"github.com/cardmeter/cardmeter/pkg/query"
	"github.com/cardmeter/cardmeter/pkg/webhook"
	"github.com/cardmeter/cardmeter/schemas"
)

// Config configures the API.
type Config struct {
	// Analytics, when set, is the ClickHouse the console's charts read
	// (daily usage, stops per hour), as the read-only analyst user.
	Analytics    *Analytics
	Partitions   int
	ChunkRecords int // records per log message at most; default 4096
	Batch        BatchLimits
	Limits       cdr.Limits    // per-record validation bounds
	ReadTimeout  time.Duration // max wait for ?min_position; default 5 s
	// Batches keeps the first answer of each usage batch (idempotent
	// retries); Resolved, the re-submitted rejections. The caller opens
	// them before serving: the API never runs without them.
	Batches, Resolved jetstream.KeyValue
	// Webhooks holds the webhook subscriptions; nil: the webhook routes
	// answer 404.
	Webhooks jetstream.KeyValue
	// WebhookAllowPrivate lets a webhook's URL resolve to loopback,
	// link-local and private addresses.
	WebhookAllowPrivate bool
	// Healthy reports whether the process can still make progress, for
	// /healthz; nil: it can.
	Healthy func() error
	// Tokens are the bearer tokens; nil runs the API open (loopback only).
	Tokens *Tokens
	// PublishTimeout bounds how long a write waits for JetStream before
	// answering 503; default 10 s.
	PublishTimeout time.Duration
	// VerdictWait bounds how long a usage batch's answer waits for the
	// projector's verdicts (?wait=false: not at all); past it the answer
	// says they are pending. Default 2 s.
	VerdictWait time.Duration
}

// BatchLimits bound one usage batch. Each refusal names its limit.
type BatchLimits struct {
	MaxBodyBytes         int64 // the body as sent; default 64 MiB (413 limit/body-size)
	MaxDecompressedBytes int64 // a gzip body inflated; default 512 MiB (413 limit/decompressed-size)
	MaxRecords           int   // records in one batch; default 1,000,000 (413 limit/records)
	MaxLineBytes         int   // one line; default 64 KiB (400 limit/line-length)
	// InFlightBytes bounds the memory all batches in flight hold together
	// (bodies, chunks being filled and unacknowledged, rejections); past
	// it a batch is answered 503 with Retry-After. Default 512 MiB, and
	// never less than twice the largest body.
	InFlightBytes int64
}

// DefaultBatchLimits are used for zero fields.
var DefaultBatchLimits = BatchLimits{MaxBodyBytes: 64 << 20, MaxDecompressedBytes: 512 << 20, MaxRecords: 1_000_000, MaxLineBytes: 64 << 10, InFlightBytes: 512 << 20}

// Server is the HTTP API. Create it with New; it is an http.Handler.
type Server struct {
	intake    struct{ accepted, rejected atomic.Int64 }
	endStream chan struct{} // closed when the streams are to end (a shutdown)
	endOnce   sync.Once
	streams   chan struct{} // a slot per event stream served
	cfg       Config
	nc        *nats.Conn
	js        jetstream.JetStream
	dir       *Directory
	clock     *clock.Clock
	log       *zap.Logger
	mux       *http.ServeMux
	ready     func() (Readiness, error)
	metrics   *metrics
	routes    []string
	budget    *budget // of the usage batches in flight

	auditing sync.WaitGroup // audit entries awaiting their ack
	auditMu  sync.Mutex     // guards drained, so that no Add follows Drain's Wait
	drained  bool

	batches  jetstream.KeyValue // first answers of usage batches
	resolved jetstream.KeyValue // re-submitted rejections
	webhooks *webhook.Store     // nil without the bucket
}

type metrics struct {
	auditFailures prometheus.Counter
	records       *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	delay         prometheus.Histogram
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
}

// Readiness is what /readyz reports besides ready or not: how far behind
// the pipeline's consumers are.
type Readiness struct {
	ProjectorLag *uint64 `json:"projector_lag_messages,omitempty"`
	SinkPending  *uint64 `json:"sink_pending_messages,omitempty"`
}

// New wires the API. ready reports the pipeline's readiness for /readyz.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, dir *Directory, clk *clock.Clock, reg prometheus.Registerer, ready func() (Readiness, error), log *zap.Logger) *Server {
	if cfg.Partitions <= 0 {
		panic("api: Config.Partitions is required: the log's, from broker.Ensure or broker.Check")
	}
	if cfg.Batch.MaxBodyBytes == 0 {
		cfg.Batch.MaxBodyBytes = DefaultBatchLimits.MaxBodyBytes
	}
	if cfg.Batch.MaxDecompressedBytes == 0 {
		cfg.Batch.MaxDecompressedBytes = DefaultBatchLimits.MaxDecompressedBytes
	}
	if cfg.Batch.MaxRecords == 0 {
		cfg.Batch.MaxRecords = DefaultBatchLimits.MaxRecords
	}
	if cfg.Batch.MaxLineBytes == 0 {
		cfg.Batch.MaxLineBytes = DefaultBatchLimits.MaxLineBytes
	}
	if cfg.Batch.InFlightBytes == 0 {
		cfg.Batch.InFlightBytes = DefaultBatchLimits.InFlightBytes
	}
	cfg.Batch.InFlightBytes = max(cfg.Batch.InFlightBytes, 2*cfg.Batch.MaxBodyBytes)
	if cfg.VerdictWait == 0 {
		cfg.VerdictWait = 2 * time.Second
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 10 * time.Second
	}
	if cfg.ChunkRecords == 0 {
		cfg.ChunkRecords = 4096
	}
	if cfg.Limits == (cdr.Limits{}) {
		cfg.Limits = cdr.DefaultLimits
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = 5 * time.Second
	}
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_ingest_records_total",
			Help: "Usage records received, by carrier and outcome (accepted, rejected, duplicate_chunk)."}, []string{"carrier", "outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_ingest_rejected_total",
			Help: "Usage records rejected, by carrier and the field at fault (\"record\": the record as a whole)."}, []string{"carrier", "field"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cardmeter_ingest_delay_seconds",
			Help:    "From a stored record's end time to its storage: how late carriers send usage.",
			Buckets: []float64{1, 10, 60, 300, 900, 3600, 3 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400}}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_http_requests_total",
			Help: "HTTP requests by route and status code."}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cardmeter_http_request_seconds",
			Help: "HTTP request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"route"}),
	}
	m.auditFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_audit_failures_total",
		Help: "Writes whose audit entry the log did not store (each is logged with who and what)."})
	reg.MustRegister(m.records, m.rejected, m.delay, m.requests, m.latency, m.auditFailures)
	s := &Server{cfg: cfg, nc: nc, js: js, dir: dir, clock: clk, log: log, mux: http.NewServeMux(), ready: ready, metrics: m, endStream: make(chan struct{}), streams: make(chan struct{}, MaxStreams),
		budget: newBudget(cfg.Batch.InFlightBytes, reg)}
	s.batches, s.resolved = cfg.Batches, cfg.Resolved
	if cfg.Webhooks != nil {
		s.webhooks = webhook.NewStore(cfg.Webhooks)
	}
	routes := []struct {
		pattern string
		scope   string
		h       func(http.ResponseWriter, *http.Request) error
		tenant  bool // answers an account's token (read:account:<id>, operator:account:<id>) for that account's things only
	}{
		{"PUT /v1/plans/{plan_id}", ScopeBilling, s.putPlan, false},
		{"GET /v1/plans/{plan_id}", ScopeRead, s.getPlan, false},
		{"PUT /v1/cards/{iccid}", ScopeBilling, s.putCard, false},
		{"GET /v1/cards/{iccid}", ScopeRead, s.getCard, true},
		{"GET /v1/cards", ScopeRead, s.listCards, true},
		{"GET /v1/cards/{iccid}/events", ScopeRead, s.getCardEvents, true},
		{"POST /v1/cards/{iccid}/renewals", ScopeBilling, s.postRenewal, false},
		{"POST /v1/cards/{iccid}/stop", ScopeOperator, s.command(card.TypeStopRequested), true},
		{"POST /v1/cards/{iccid}/resume", ScopeOperator, s.command(card.TypeResumeRequested), true},
		{"POST /v1/cards/{iccid}/resync", ScopeOperator, s.postResync, true},
		{"POST /v1/cards/{iccid}/rebind", ScopeOperator, s.postRebind, true},
		{"POST /v1/carriers/{carrier}/drift", ScopeOperator, s.postDrift, false},
		{"PUT /v1/accounts/{account_id}", ScopeBilling, s.putAccount, false},
		{"GET /v1/accounts/{account_id}", ScopeRead, s.getAccount, true},
		{"POST /v1/accounts/{account_id}/payments", ScopeBilling, s.postPayment, false},
		{"POST /v1/accounts/{account_id}/charges", ScopeBilling, s.postCharge, false},
		{"PUT /v1/pools/{pool_id}", ScopeBilling, s.putPool, false},
		{"POST /v1/usage", scopeUsage, s.postUsage, false},
		{"GET /v1/rejections", ScopeRead, s.listRejections, true},
		{"GET /v1/rejections/summary", ScopeRead, s.rejectionsSummary, true},
		{"GET /v1/whoami", scopeAny, s.whoami, false},
		{"POST /v1/simulations", ScopeRead, s.postSimulation, true},
		{"GET /v1/simulations/{id}", ScopeRead, s.getSimulation, true},
		{"POST /v1/rejections/resubmit", scopeUsage, s.resubmit, false},
		{"PUT /v1/clock", ScopeAdmin, s.putClock, false},
		{"GET /v1/audit", ScopeAdmin, s.listAudit, false},
		{"PUT /v1/webhooks/{id}", ScopeAdmin, s.putWebhook, false},
		{"GET /v1/webhooks/{id}", ScopeAdmin, s.getWebhook, false},
		{"DELETE /v1/webhooks/{id}", ScopeAdmin, s.deleteWebhook, false},
		{"GET /v1/webhooks", ScopeAdmin, s.listWebhooks, false},
		{"POST /v1/webhooks/{id}/rotate-secret", ScopeAdmin, s.rotateWebhookSecret, false},
		{"GET /v1/webhooks/{id}/deliveries", ScopeAdmin, s.listWebhookDeliveries, false},
		{"POST /v1/webhooks/{id}/replay", ScopeAdmin, s.replayWebhook, false},
		{"GET /v1/clock", ScopeRead, s.getClock, false},
		{"GET /v1/status", ScopeRead, s.getStatus, false},
		{"GET /v1/events/stream", ScopeRead, s.streamEvents, true},
		{"GET /v1/search", ScopeRead, s.search, true},
		{"GET /v1/fleet", ScopeRead, s.fleet, false},
		{"GET /v1/fleet/stops", ScopeRead, s.fleetStops, false},
		{"GET /v1/cards/{iccid}/usage/daily", ScopeRead, s.cardDailyUsage, true},
		{"GET /v1/cards/{iccid}/records/{carrier}/{record_id}", ScopeRead, s.cardRecord, true},
		{"GET /v1/accounts/{account_id}/ledger", ScopeRead, s.accountLedger, true},
		{"GET /v1/accounts/{account_id}/causes/{id}", ScopeRead, s.accountCause, true},
		{"GET /healthz", "", s.healthz, false},
		{"GET /readyz", "", s.readyz, false},
		{"GET /openapi.yaml", "", s.openapi, false},
	}
	for _, r := range routes {
		s.mux.Handle(r.pattern, s.wrap(r.pattern, r.scope, r.tenant, r.h))
		s.routes = append(s.routes, r.pattern)
	}
	var gatherer prometheus.Gatherer = prometheus.DefaultGatherer
	if g, ok := reg.(prometheus.Gatherer); ok {
		gatherer = g
	}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	// the console: its page and files are public; what it shows, the
	// token the user signs in with decides
	s.mux.Handle("GET /{$}", console.Index())
	s.mux.Handle("GET /console/", console.Assets())
	s.routes = append(s.routes, "GET /metrics", "GET /{$}", "GET /console/")
	return s
}

// principal is the request's authenticated principal; nil when open.
func principal(r *http.Request) *Principal {
	p, _ := r.Context().Value(principalKey{}).(*Principal)
	return p
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// EndStreams ends the event streams being served, so that a graceful
// shutdown does not wait for their clients to go.
func (s *Server) EndStreams() { s.endOnce.Do(func() { close(s.endStream) }) }

// Intake is how many records this API stored and rejected since it
// started (for the status reports' rates).
func (s *Server) Intake() (stored, rejected int64) {
	return s.intake.accepted.Load(), s.intake.rejected.Load()
}

// statusWriter remembers the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	code    int
	problem string // the problem type answered, if one was
}

func (w *statusWriter) WriteHeader(code int) { w.code = code; w.ResponseWriter.WriteHeader(code) }

// Unwrap lets http.ResponseController reach the connection (to flush a
// stream and move its write deadline).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// wrap authorizes a route's requests, answers its errors and measures it.
// An account's token reaches only the routes that show an account's
// things (tenant), and finds nothing (404) at every other: what is not
// its account's is not there for it.
func (s *Server) wrap(route, scope string, tenant bool, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: 200}
		p, err := s.authorize(r, scope)
		if _, limited := p.Accounts(scope); err == nil && limited && !tenant {
			err = problem(http.StatusNotFound, "not-found", "not found", "nothing here for this token")
		}
		if err == nil {
			if p != nil {
				r = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
			}
			err = h(sw, r)
		}
		if err != nil {
			s.writeError(sw, r, err)
		}
		s.audit(r, route, p, sw)
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		s.metrics.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// Problem is an RFC 9457 problem document. Errors is set for batch
// validation; the other fields of a partly accepted batch ride along.
type Problem struct {
	Type   string             `json:"type"`
	Title  string             `json:"title"`
	Status int                `json:"status"`
	Detail string             `json:"detail,omitempty"`
	Errors []*cdr.RecordError `json:"errors,omitempty"`
	Field  string             `json:"field,omitempty"`
	*BatchResult
}

func (p *Problem) Error() string { return p.Title + ": " + p.Detail }

func problem(status int, typ, title, detail string) *Problem {
	return &Problem{Type: "cardmeter:" + typ, Title: title, Status: status, Detail: detail}
}

func invalid(field, reason string) *Problem {
	p := problem(http.StatusBadRequest, "invalid/"+field, "invalid field", field+": "+reason)
	p.Field = field
	return p
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var p *Problem
	var rp *retryProblem
	var ap *authProblem
	var ie *card.InvalidError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ap):
		w.Header().Set("WWW-Authenticate", `Bearer realm="cardmeter"`)
		p = ap.Problem
	case errors.As(err, &rp):
		w.Header().Set("Retry-After", "1")
		p = rp.Problem
	case errors.As(err, &p):
	case errors.As(err, &ie):
		p = invalid(ie.Field, ie.Reason)
	case errors.As(err, &mbe):
		p = problem(http.StatusRequestEntityTooLarge, "limit/body-size", "request body too large",
			fmt.Sprintf("the body is over the limit of %d bytes", mbe.Limit))
	case errors.Is(err, errProjectorUnavailable):
		w.Header().Set("Retry-After", "1")
		p = problem(http.StatusServiceUnavailable, "unavailable/projector", "projector unavailable", err.Error())
	case errors.Is(err, errUnavailable):
		w.Header().Set("Retry-After", "2")
		p = problem(http.StatusServiceUnavailable, "unavailable/log", "log unavailable", err.Error())
	case errors.Is(err, os.ErrDeadlineExceeded):
		// the connection's read deadline: the client sent too slowly
		s.log.Info("request body cut at the read timeout", zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr))
		p = problem(http.StatusRequestTimeout, "client/timeout", "request timeout",
			"the request did not arrive within the server's read timeout")
	default:
		s.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
		p = problem(http.StatusInternalServerError, "internal", "internal error", "see the server log")
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.problem = p.Type
	}
	writeJSON(w, p.Status, "application/problem+json", p)
}

func writeJSON(w http.ResponseWriter, status int, ctype string, v any) {
	writeRaw(w, status, ctype, encodeJSON(v))
}

// encodeJSON is the API's JSON: indented, newline-terminated.
func encodeJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // every answer type encodes
	return b.Bytes()
}

func writeRaw(w http.ResponseWriter, status int, ctype string, body []byte) {
	w.Header().Set("Content-Type", ctype)
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client may have gone
}

func ok(w http.ResponseWriter, v any) error {
	writeJSON(w, http.StatusOK, "application/json", v)
	return nil
}

var errUnavailable = errors.New("the log (JetStream) did not store the write; retry later")

var errProjectorUnavailable = errors.New("the projector owning the card did not answer; retry later")

// queryLimit reads ?limit= (1 to most; def when absent).
func queryLimit(q url.Values, def, most int) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, invalid("limit", fmt.Sprintf("1 to %d", most))
	}
	return n, nil
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// checkZone refuses the zone names that are not a place: Local is the
// server's own zone, which a replay on another machine would read
// otherwise.
func checkZone(name string) error {
	if strings.EqualFold(name, "Local") {
		return invalid("time_zone", "name a zone such as Asia/Shanghai or UTC: Local is whatever the server's is")
	}
	return nil
}

func checkID(field, v string) error {
	if !idPattern.MatchString(v) {
		return invalid(field, "must be 1 to 64 letters, digits, '_' or '-'")
	}
	return nil
}

func decodeBody(r *http.Request, v any) error {
	d := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return invalid(te.Field, "wrong type: expected "+te.Type.String())
		}
		return problem(http.StatusBadRequest, "invalid/json", "malformed JSON body", err.Error())
	}
	return nil
}

// publish writes one message to the log and returns its position. The id
// makes a retry of the same write idempotent within the duplicate window.
func (s *Server) publish(ctx context.Context, subject, id string, data []byte) (uint64, error) {
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, id)
	ack, err := s.js.PublishMsg(ctx, m)
	if err != nil {
		s.log.Warn("publish failed", zap.String("subject", subject), zap.Error(err))
		return 0, fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return ack.Sequence, nil
}

func contentID(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) error {
	if s.cfg.Healthy != nil {
		if err := s.cfg.Healthy(); err != nil {
			return problem(http.StatusServiceUnavailable, "unavailable/unhealthy", "cannot make progress", err.Error())
		}
	}
	return ok(w, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) error {
	if s.nc.Status() != nats.CONNECTED {
		return problem(http.StatusServiceUnavailable, "unavailable/nats", "not ready", "not connected to NATS")
	}
	var rd Readiness
	if s.ready != nil {
		var err error
		if rd, err = s.ready(); err != nil {
			return problem(http.StatusServiceUnavailable, "unavailable/pipeline", "not ready", err.Error())
		}
	}
	return ok(w, struct {
		Status string `json:"status"`
		Readiness
	}{"ready", rd})
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/yaml")
	_, err := w.Write(schemas.OpenAPI)
	return err
}

// ---- plans

type planBody struct {
	QuotaBytes       *uint64 `json:"quota_bytes"`
	MonthlyFeeFen    int64   `json:"monthly_fee_fen"`
	OverageFenPerMB  int64   `json:"overage_fen_per_mb"`
	TermMonths       int     `json:"term_months"`
	TimeZone         string  `json:"time_zone"`
	CycleAnchorDay   int     `json:"cycle_anchor_day"`
	WarningPct       []int   `json:"warning_thresholds_pct"`
	BindIMEI         string  `json:"bind_imei"`
	StopOnIMEIChange bool    `json:"stop_on_imei_change"`
	AnomalyMinBytes  uint64  `json:"anomaly_min_bytes"`
	AnomalyFactor    float64 `json:"anomaly_factor"`
	StopOnAnomaly    bool    `json:"stop_on_anomaly"`
}

type planResponse struct {
	card.PlanChanged
	Position uint64 `json:"position,omitempty"`
}

func toPlanResponse(p card.PlanChanged, pos uint64) planResponse {
	if p.TimeZone == "" {
		p.TimeZone = card.DefaultTimeZone
	}
	if p.CycleAnchorDay == 0 {
		p.CycleAnchorDay = 1
	}
	if len(p.WarningPct) == 0 {
		p.WarningPct = []int{80, 90, 100}
	}
	if p.AnomalyMinBytes == 0 {
		p.AnomalyMinBytes = card.DefaultAnomalyMinBytes
	}
	if p.AnomalyFactor == 0 {
		p.AnomalyFactor = card.DefaultAnomalyFactor
	}
	return planResponse{PlanChanged: p, Position: pos}
}

// putPlan writes the plan to every partition: any account may use it, and
// each partition's log must replay on its own.
func (s *Server) putPlan(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("plan_id")
	if err := checkID("plan_id", id); err != nil {
		return err
	}
	var b planBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if b.QuotaBytes == nil {
		return invalid("quota_bytes", "required")
	}
	pc := card.PlanChanged{PlanID: id, QuotaBytes: *b.QuotaBytes, MonthlyFeeFen: b.MonthlyFeeFen, OverageFenPerMB: b.OverageFenPerMB,
		TermMonths: b.TermMonths, TimeZone: b.TimeZone, CycleAnchorDay: b.CycleAnchorDay, WarningPct: b.WarningPct,
		BindIMEI: b.BindIMEI, StopOnIMEIChange: b.StopOnIMEIChange,
		AnomalyMinBytes: b.AnomalyMinBytes, AnomalyFactor: b.AnomalyFactor, StopOnAnomaly: b.StopOnAnomaly}
	if pc.TimeZone == "" {
		pc.TimeZone = card.DefaultTimeZone
	}
	if err := checkZone(pc.TimeZone); err != nil {
		return err
	}
	if err := pc.Validate(); err != nil {
		return err
	}
	planJSON, _ := json.Marshal(pc)
	in := card.Input{Type: card.TypePlanChanged, ID: "plan-" + id + "-" + contentID(planJSON), At: s.clock.Now(), Plan: &pc}
	data, _ := json.Marshal(in)
	var pos uint64
	for p := 0; p < s.cfg.Partitions; p++ {
		seq, err := s.publish(r.Context(), broker.BillingSubject(p), in.ID+"-"+strconv.Itoa(p), data)
		if err != nil {
			return err
		}
		pos = max(pos, seq)
	}
	if err := s.dir.PutPlan(r.Context(), pc); err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return ok(w, toPlanResponse(pc, pos))
}

func (s *Server) getPlan(w http.ResponseWriter, r *http.Request) error {
	p, found := s.dir.Plan(r.PathValue("plan_id"))
	if !found {
		return problem(http.StatusNotFound, "not-found/plan", "no such plan", r.PathValue("plan_id"))
	}
	return ok(w, toPlanResponse(p, 0))
}

// ---- clock

type clockBody struct {
	Now string `json:"now"`
}

func (s *Server) putClock(w http.ResponseWriter, r *http.Request) error {
	var b clockBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	t, err := time.Parse(time.RFC3339, b.Now)
	if err != nil {
		return invalid("now", "not an RFC 3339 time with offset")
	}
	pos, err := s.clock.Set(r.Context(), t.Unix())
	switch {
	case errors.Is(err, clock.ErrNotManual):
		return problem(http.StatusConflict, "refused/clock-not-manual", "clock is not manual", "start with --clock=manual to set the time by API")
	case errors.Is(err, clock.ErrBackwards):
		return problem(http.StatusConflict, "refused/clock-backwards", "the clock never moves back", err.Error())
	case err != nil:
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return ok(w, map[string]any{"now": time.Unix(t.Unix(), 0).UTC().Format(time.RFC3339), "manual": true, "position": pos})
}

func (s *Server) getClock(w http.ResponseWriter, _ *http.Request) error {
	return ok(w, map[string]any{"now": time.Unix(s.clock.Now(), 0).UTC().Format(time.RFC3339), "manual": s.clock.Manual()})
}

// query asks the projector owning a partition, and turns its failures into
// problems: 503 when it does not answer or has not reached min_position.
func (s *Server) query(ctx context.Context, part int, q query.Request) (*query.Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadTimeout+2*time.Second)
	defer cancel()
	reply, err := query.Ask(ctx, s.nc, broker.QuerySubject(part), q)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errProjectorUnavailable, err)
	}
	if reply.Restoring {
		return nil, &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/restoring", "partition restoring",
			fmt.Sprintf("partition %d is restoring its state after a start or a failure; it answers once it has", part))}
	}
	if reply.Timeout {
		return nil, &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/position", "position not reached", reply.Error)}
	}
	if reply.Error != "" {
		return nil, problem(http.StatusInternalServerError, "internal/projector", "projector error", reply.Error)
	}
	return reply, nil
}

// retryProblem is a problem answered with Retry-After.
type retryProblem struct{ *Problem }

func minPosition(r *http.Request) (uint64, error) {
	v := r.URL.Query().Get("min_position")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, invalid("min_position", "not a non-negative integer")
	}
	return n, nil
}
