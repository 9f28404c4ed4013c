package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// AuditEntry is one write to the API, as the AUDIT stream keeps it: who
// (the token's name; empty when no token was accepted), with which scopes,
// what (the route and path), and what came of it (the status, and the
// problem type or the decision). The stream is written by the API alone,
// after each write is answered; no API call writes to it, and it denies
// deletes and purges: entries only age out (400 days, or the oldest first
// past the stream's 1 GiB). Requests without a known token are not
// entries; a path and a key are clipped.
type AuditEntry struct {
	At       string   `json:"at"` // wall clock, RFC 3339
	Who      string   `json:"who"`
	Scopes   []string `json:"scopes,omitempty"`
	Remote   string   `json:"remote"`
	Method   string   `json:"method"`
	Route    string   `json:"route"`
	Path     string   `json:"path"`
	Key      string   `json:"idempotency_key,omitempty"`
	Status   int      `json:"status"`
	Decision string   `json:"decision"` // applied, pending, or the problem type (cardmeter:refused/…, cardmeter:auth/…)
}

// audit publishes a write's entry without holding up its answer; a
// failure to store it is logged and counted.
func (s *Server) audit(r *http.Request, route string, p *Principal, sw *statusWriter) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead || sw.code == http.StatusUnauthorized {
		// a request with no known token is nobody's write: counted in
		// cardmeter_http_requests_total, not kept (anyone could fill the
		// stream with them)
		return
	}
	e := AuditEntry{At: time.Now().UTC().Format(time.RFC3339Nano), Remote: r.RemoteAddr, Method: r.Method, Route: route,
		Path: clip(r.URL.RequestURI(), 512), Key: clip(r.Header.Get("Idempotency-Key"), 128), Status: sw.code, Decision: sw.problem}
	if p != nil {
		e.Who, e.Scopes = p.Name, p.Scopes
	} else if s.cfg.Tokens == nil {
		e.Who = "open"
	}
	switch {
	case e.Decision != "":
	case sw.code == http.StatusAccepted:
		e.Decision = "pending"
	case sw.code < 300:
		e.Decision = "applied"
	default:
		e.Decision = strings.ToLower(http.StatusText(sw.code)) // answered without a problem type (a batch partly rejected)
	}
	data, _ := json.Marshal(e)
	m := nats.NewMsg(broker.AuditSubject)
	m.Data = data
	f, err := s.js.PublishMsgAsync(m)
	if err != nil {
		s.auditFailed(e, err)
		return
	}
	s.auditMu.Lock()
	if s.drained {
		// a handler that outlived the HTTP server's shutdown: its entry
		// is logged, as Drain no longer waits
		s.auditMu.Unlock()
		s.auditFailed(e, errors.New("the API was stopping"))
		return
	}
	s.auditing.Add(1)
	s.auditMu.Unlock()
	go func() {
		defer s.auditing.Done()
		t := time.NewTimer(s.cfg.PublishTimeout)
		defer t.Stop()
		select {
		case <-f.Ok():
		case err := <-f.Err():
			s.auditFailed(e, err)
		case <-t.C:
			s.auditFailed(e, jetstream.ErrNoStreamResponse)
		}
	}()
}

// clip bounds a client's text in an entry.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Drain waits for the audit entries in flight (after the HTTP server has
// stopped taking requests).
func (s *Server) Drain() {
	s.auditMu.Lock()
	s.drained = true
	s.auditMu.Unlock()
	s.auditing.Wait()
}

func (s *Server) auditFailed(e AuditEntry, err error) {
	s.metrics.auditFailures.Inc()
	s.log.Error("audit entry not stored", zap.String("who", e.Who), zap.String("route", e.Route), zap.String("path", e.Path),
		zap.Int("status", e.Status), zap.Error(err))
}

// listAudit answers GET /v1/audit?since=&who=&limit= (admin): the entries
// oldest first.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.AuditSubject}}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return invalid("since", "not an RFC 3339 time with offset")
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	limit, err := queryLimit(q, 1000, 10000)
	if err != nil {
		return err
	}
	who := q.Get("who")
	out := []AuditEntry{}
	err = s.scan(r.Context(), broker.StreamAudit, cfg, func(m jetstream.Msg) (bool, error) {
		var e AuditEntry
		if json.Unmarshal(m.Data(), &e) == nil && (who == "" || strings.EqualFold(e.Who, who)) {
			out = append(out, e)
		}
		return len(out) < limit, nil
	})
	if err != nil {
		return err
	}
	return ok(w, map[string]any{"entries": out})
}
