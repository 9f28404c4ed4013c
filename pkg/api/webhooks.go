package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// webhookBody is PUT /v1/webhooks/{id}.
type webhookBody struct {
	URL         string   `json:"url"`
	EventTypes  []string `json:"event_types"`
	AccountID   string   `json:"account_id"`
	Description string   `json:"description"`
	Enabled     *bool    `json:"enabled"`
	Parallel    int      `json:"parallel"`
	StartTime   string   `json:"start_time"`
}

// WebhookResponse is a subscription as the API shows it: its secret only
// in the answer that made it (and to a rotation).
type WebhookResponse struct {
	ID             string   `json:"id"`
	URL            string   `json:"url"`
	EventTypes     []string `json:"event_types"`
	AccountID      string   `json:"account_id,omitempty"`
	Description    string   `json:"description,omitempty"`
	Enabled        bool     `json:"enabled"`
	State          string   `json:"state"` // enabled, failing, disabled
	DisabledReason string   `json:"disabled_reason,omitempty"`
	FailingSince   string   `json:"failing_since,omitempty"`
	Parallel       int      `json:"parallel"`
	StartTime      string   `json:"start_time"`
	CreatedAt      string   `json:"created_at"`
	UpdatedAt      string   `json:"updated_at"`
	Secret         string   `json:"secret,omitempty"`
	// the last replay asked for, and how it went once done
	Replay     *webhook.Replay       `json:"replay,omitempty"`
	ReplayDone *webhook.ReplayResult `json:"replay_done,omitempty"`
}

func webhookView(sub *webhook.Subscription) WebhookResponse {
	v := WebhookResponse{ID: sub.ID, URL: sub.URL, EventTypes: sub.EventTypes, AccountID: sub.AccountID, Description: sub.Description,
		Enabled: sub.Enabled, State: "enabled", DisabledReason: sub.DisabledReason, Parallel: sub.Parallel,
		StartTime: sub.StartTime.UTC().Format(time.RFC3339), CreatedAt: sub.CreatedAt.UTC().Format(time.RFC3339),
		UpdatedAt: sub.UpdatedAt.UTC().Format(time.RFC3339), Replay: sub.Replay, ReplayDone: sub.ReplayDone}
	if v.Parallel == 0 {
		v.Parallel = webhook.DefaultParallel
	}
	if sub.FailingSince != nil {
		v.FailingSince = sub.FailingSince.UTC().Format(time.RFC3339)
		v.State = "failing"
	}
	if !sub.Enabled {
		v.State = "disabled"
	}
	return v
}

func (s *Server) webhookID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !webhook.ValidID(id) {
		return "", invalid("id", "must be 1 to 64 letters, digits, '_' or '-'")
	}
	if s.webhooks == nil {
		return "", problem(http.StatusNotFound, "not-found", "webhooks not configured", "this API runs without the webhooks bucket")
	}
	return id, nil
}

var errWebhookNotFound = problem(http.StatusNotFound, "not-found/webhook", "no such webhook", "no webhook has this id")

func (s *Server) putWebhook(w http.ResponseWriter, r *http.Request) error {
	id, err := s.webhookID(r)
	if err != nil {
		return err
	}
	var b webhookBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	start := now
	if b.StartTime != "" {
		t, err := time.Parse(time.RFC3339, b.StartTime)
		if err != nil {
			return invalid("start_time", "RFC 3339 with an offset")
		}
		start = t
	}
	sub := &webhook.Subscription{ID: id, URL: b.URL, EventTypes: b.EventTypes, AccountID: b.AccountID, Description: b.Description,
		Enabled: b.Enabled == nil || *b.Enabled, Parallel: b.Parallel, StartTime: start, CreatedAt: now, UpdatedAt: now}
	if err := sub.Validate(); err != nil {
		var fe *webhook.FieldError
		if errors.As(err, &fe) {
			return invalid(fe.Field, fe.Reason)
		}
		return err
	}
	if b.AccountID != "" {
		if err := checkID("account_id", b.AccountID); err != nil {
			return err
		}
	}
	if err := s.checkWebhookHost(r.Context(), sub.URL); err != nil {
		return err
	}
	ctx := r.Context()
	old, rev, err := s.webhooks.Get(ctx, id)
	switch {
	case errors.Is(err, webhook.ErrNotFound):
		secret, err := webhook.NewSecret()
		if err != nil {
			return err
		}
		sub.Secrets = []webhook.Secret{{Key: secret}}
		if _, err := s.webhooks.Put(ctx, sub, 0); errors.Is(err, jetstream.ErrKeyExists) {
			return problem(http.StatusConflict, "conflict/webhook", "the webhook was made meanwhile", "read it; rotate its secret if this request's answer is lost")
		} else if err != nil {
			return fmt.Errorf("%w: %v", errUnavailable, err)
		}
		v := webhookView(sub)
		v.Secret = secret
		writeJSON(w, http.StatusCreated, "application/json", v)
		return nil
	case err != nil:
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	if b.StartTime != "" && !start.Equal(old.StartTime) {
		return invalid("start_time", "is set when the webhook is made; to deliver earlier events, replay them")
	}
	// a change keeps the secrets, where delivery started, when it was
	// made and its replays; enabling it again clears its failures
	sub.Secrets, sub.StartTime, sub.CreatedAt = old.Secrets, old.StartTime, old.CreatedAt
	sub.Replay, sub.ReplayDone = old.Replay, old.ReplayDone
	if b.Enabled == nil {
		sub.Enabled = old.Enabled // a change that does not say keeps it as it is (disabled stays disabled)
	}
	if sub.Enabled {
		sub.FailingSince, sub.DisabledReason = old.FailingSince, ""
		if !old.Enabled {
			sub.FailingSince = nil
		}
	} else {
		sub.DisabledReason, sub.FailingSince, sub.DisabledLogged = old.DisabledReason, old.FailingSince, old.DisabledLogged
	}
	if _, err := s.webhooks.Put(ctx, sub, rev); errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLast(err) {
		return problem(http.StatusConflict, "conflict/webhook", "the webhook changed meanwhile", "read it again and retry the change")
	} else if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return ok(w, webhookView(sub))
}

// checkWebhookHost refuses a URL whose host resolves to an address the
// notifier would refuse (it checks again at every connection).
func (s *Server) checkWebhookHost(ctx context.Context, raw string) error {
	if s.cfg.WebhookAllowPrivate {
		return nil
	}
	u, _ := url.Parse(raw) // validated
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", u.Hostname())
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return invalid("url", fmt.Sprintf("its host %s does not resolve: %v", u.Hostname(), err))
	case err != nil:
		// a resolver timing out or failing says nothing of the URL
		return &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/dns", "host not resolved now",
			fmt.Sprintf("resolving %s failed (%v); retry later", u.Hostname(), err))}
	}
	for _, a := range addrs {
		if why := webhook.Refused(a); why != "" {
			return invalid("url", fmt.Sprintf("its host resolves to %s, %s: refused (the server's --webhook-allow-private allows it)", a, why))
		}
	}
	return nil
}

func (s *Server) getWebhook(w http.ResponseWriter, r *http.Request) error {
	id, err := s.webhookID(r)
	if err != nil {
		return err
	}
	sub, _, err := s.webhooks.Get(r.Context(), id)
	if errors.Is(err, webhook.ErrNotFound) {
		return errWebhookNotFound
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return ok(w, webhookView(sub))
}

func (s *Server) listWebhooks(w http.ResponseWriter, r *http.Request) error {
	if s.webhooks == nil {
		return ok(w, map[string]any{"webhooks": []WebhookResponse{}})
	}
	subs, err := s.webhooks.List(r.Context())
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	out := make([]WebhookResponse, 0, len(subs))
	for _, sub := range subs {
		out = append(out, webhookView(sub))
	}
	return ok(w, map[string]any{"webhooks": out})
}

func (s *Server) deleteWebhook(w http.ResponseWriter, r *http.Request) error {
	id, err := s.webhookID(r)
	if err != nil {
		return err
	}
	err = s.webhooks.Delete(r.Context(), id)
	if errors.Is(err, webhook.ErrNotFound) {
		return errWebhookNotFound
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// secretOverlap is how long a rotated-out secret still signs deliveries.
const secretOverlap = 24 * time.Hour

func (s *Server) rotateWebhookSecret(w http.ResponseWriter, r *http.Request) error {
	id, err := s.webhookID(r)
	if err != nil {
		return err
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	until := now.Add(secretOverlap)
	overlap := false
	_, err = s.webhooks.Update(r.Context(), id, func(sub *webhook.Subscription) error {
		overlap = len(sub.Secrets) > 0
		// the new one, and the one it replaces for the overlap: two at
		// most, so rotations never grow the signature header, and a second
		// rotation revokes a leaked secret at once
		keep := []webhook.Secret{{Key: secret}}
		if len(sub.Secrets) > 0 {
			prev := sub.Secrets[0]
			prev.Expires = &until
			keep = append(keep, prev)
		}
		sub.Secrets, sub.UpdatedAt = keep, now
		return nil
	})
	if errors.Is(err, webhook.ErrNotFound) {
		return errWebhookNotFound
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	out := map[string]any{"id": id, "secret": secret}
	if overlap {
		out["previous_valid_until"] = until.Format(time.RFC3339)
	}
	return ok(w, out)
}

func (s *Server) listWebhookDeliveries(w http.ResponseWriter, r *http.Request) error {
	id, err := s.webhookID(r)
	if err != nil {
		return err
	}
	limit, err := queryLimit(r.URL.Query(), 100, 1000)
	if err != nil {
		return err
	}
	if _, _, err := s.webhooks.Get(r.Context(), id); errors.Is(err, webhook.ErrNotFound) {
		return errWebhookNotFound
	}
	attempts, err := webhook.Attempts(r.Context(), s.js, id, limit)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	return ok(w, map[string]any{"id": id, "attempts": attempts})
}

// replayBody is POST /v1/webhooks/{id}/replay: one of the two.
type replayBody struct {
	DeadLetters bool   `json:"dead_letters"`
	Since       string `json:"since"`
}

// replayWebhook asks the notifier to deliver again the webhook's dead
// letters, or every event since a time; it answers 202 (the notifier does
// it; GET shows replay_done when done).
func (s *Server) replayWebhook(w http.ResponseWriter, r *http.Request) error {
	id, err := s.webhookID(r)
	if err != nil {
		return err
	}
	var b replayBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	now := time.Now().UTC()
	rp := &webhook.Replay{RequestedAt: now, DeadLetters: b.DeadLetters}
	switch {
	case b.DeadLetters == (b.Since != ""):
		return invalid("dead_letters", `one of "dead_letters": true or "since": a time`)
	case b.Since != "":
		t, err := time.Parse(time.RFC3339, b.Since)
		if err != nil {
			return invalid("since", "RFC 3339 with an offset")
		}
		rp.Since = &t
	}
	rp.ID = fmt.Sprintf("%d", now.UnixNano())
	sub, err := s.webhooks.Update(r.Context(), id, func(sub *webhook.Subscription) error {
		if !sub.Enabled {
			// a disabled webhook is not delivered: its replay would wait
			return problem(http.StatusConflict, "refused/webhook-disabled", "the webhook is disabled",
				"enable it first (PUT with \"enabled\": true), then ask for the replay")
		}
		if rp.Since != nil && rp.Since.Before(sub.StartTime) {
			return invalid("since", "before the webhook's start_time "+sub.StartTime.UTC().Format(time.RFC3339)+": its consumer starts there")
		}
		sub.Replay = rp
		return nil
	})
	if errors.Is(err, webhook.ErrNotFound) {
		return errWebhookNotFound
	}
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	writeJSON(w, http.StatusAccepted, "application/json", webhookView(sub))
	return nil
}

// isWrongLast is JetStream's answer to a compare-and-set that lost.
func isWrongLast(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
