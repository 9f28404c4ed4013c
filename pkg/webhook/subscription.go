// Package webhook delivers cardmeter's events to HTTP endpoints: the
// subscriptions (kept in the webhooks bucket), their signing secrets, the
// Standard Webhooks signature, the guard against private addresses, and
// the notifier that reads each subscription's durable consumer on EVENTS
// and delivers in order per card, retrying, and dead-lettering what its
// endpoint does not take in time.
package webhook

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Subscription is a webhook: where to deliver which events, how, and its
// state. It is kept in the webhooks bucket under its id.
type Subscription struct {
	ID          string   `json:"id"`
	URL         string   `json:"url"`
	EventTypes  []string `json:"event_types"`          // exact types, or prefixes ending in ".*"
	AccountID   string   `json:"account_id,omitempty"` // only this account's events
	Description string   `json:"description,omitempty"`
	Enabled     bool     `json:"enabled"`
	// Parallel is how many cards' events are delivered at once (each
	// card's in order); default DefaultParallel.
	Parallel int `json:"parallel,omitempty"`
	// StartTime: the first events delivered are those stored from then on.
	StartTime time.Time `json:"start_time"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Secrets sign each delivery: the newest first; an older one stays
	// valid (and signs too) until its expiry after a rotation.
	Secrets []Secret `json:"secrets"`
	// FailingSince is the first failed attempt since the last success.
	FailingSince *time.Time `json:"failing_since,omitempty"`
	// DisabledReason says why the notifier disabled it.
	DisabledReason string `json:"disabled_reason,omitempty"`
	// DisabledLogged: the log has been told of the disabling (the
	// notifier that owns the webhook tells it until this is set, so a
	// crash between the two does not lose the event).
	DisabledLogged bool `json:"disabled_logged,omitempty"`
	// Replay is the last replay asked for; ReplayDone says how it went
	// once the notifier has done it.
	Replay     *Replay       `json:"replay,omitempty"`
	ReplayDone *ReplayResult `json:"replay_done,omitempty"`
}

// Replay asks the notifier to deliver again: the dead letters, or every
// event stored since a time.
type Replay struct {
	ID          string     `json:"id"`
	DeadLetters bool       `json:"dead_letters,omitempty"`
	Since       *time.Time `json:"since,omitempty"`
	RequestedAt time.Time  `json:"requested_at"`
}

// ReplayResult is how a replay went.
type ReplayResult struct {
	ID        string    `json:"id"`
	At        time.Time `json:"at"`
	Delivered int       `json:"delivered"` // dead letters delivered (and removed)
	Left      int       `json:"left"`      // dead letters still there (their endpoint failed again)
	FromSeq   uint64    `json:"from_seq,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// ReplayPending reports whether a replay was asked for and not yet done.
func (s *Subscription) ReplayPending() bool {
	return s.Replay != nil && (s.ReplayDone == nil || s.ReplayDone.ID != s.Replay.ID)
}

// Secret is a signing key, "whsec_" and its base64.
type Secret struct {
	Key     string     `json:"key"`
	Expires *time.Time `json:"expires,omitempty"`
}

// DefaultParallel is how many cards' events a subscription delivers at once.
const DefaultParallel = 8

// MaxParallel bounds Parallel.
const MaxParallel = 64

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidID reports whether id can name a subscription (it is a subject
// token and a consumer name).
func ValidID(id string) bool { return idPattern.MatchString(id) }

// typePattern is an event type (cardmeter.card.stopped.v1) or a prefix of
// one ending in ".*" (cardmeter.card.*, cardmeter.*).
var typePattern = regexp.MustCompile(`^cardmeter(\.[a-z_]+){2}\.v[0-9]+$|^cardmeter(\.[a-z_]+){0,2}\.\*$`)

// FieldError is a refused field of a subscription.
type FieldError struct{ Field, Reason string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Validate checks what a client sends: the URL's form (its addresses are
// checked when it is delivered to), the event types, the parallelism.
func (s *Subscription) Validate() error {
	if !ValidID(s.ID) {
		return &FieldError{"id", "letters, digits, '-' and '_', at most 64"}
	}
	u, err := url.Parse(s.URL)
	switch {
	case s.URL == "":
		return &FieldError{"url", "required"}
	case err != nil:
		return &FieldError{"url", "not a URL: " + err.Error()}
	case u.Scheme != "http" && u.Scheme != "https":
		return &FieldError{"url", "only http and https"}
	case u.Hostname() == "":
		return &FieldError{"url", "no host"}
	case u.User != nil:
		return &FieldError{"url", "no credentials in the URL: the signature authenticates the sender"}
	}
	if len(s.EventTypes) == 0 {
		return &FieldError{"event_types", "at least one: a type like cardmeter.card.stopped.v1, or a prefix like cardmeter.card.*"}
	}
	for _, t := range s.EventTypes {
		if !typePattern.MatchString(t) {
			return &FieldError{"event_types", fmt.Sprintf("%q is neither a type like cardmeter.card.stopped.v1 nor a prefix like cardmeter.card.*", t)}
		}
	}
	if s.Parallel < 0 || s.Parallel > MaxParallel {
		return &FieldError{"parallel", fmt.Sprintf("between 1 and %d", MaxParallel)}
	}
	if len(s.Description) > 1024 {
		return &FieldError{"description", "at most 1,024 bytes"}
	}
	return nil
}

// Matches reports whether an event of type t is one the subscription takes.
func (s *Subscription) Matches(t string) bool {
	for _, p := range s.EventTypes {
		if p == t || (strings.HasSuffix(p, ".*") && strings.HasPrefix(t, strings.TrimSuffix(p, "*"))) {
			return true
		}
	}
	return false
}

// FilterSubjects are the EVENTS subjects of the subscription's types, none
// covering another (a consumer refuses overlapping filters). A type's
// version is not in the subject: Matches decides it.
func (s *Subscription) FilterSubjects() []string {
	var subs []string
	for _, p := range s.EventTypes {
		kind := strings.TrimPrefix(p, "cardmeter")
		kind = strings.TrimPrefix(kind, ".")
		var subject string
		if strings.HasSuffix(kind, "*") {
			kind = strings.TrimSuffix(strings.TrimSuffix(kind, "*"), ".")
			subject = "cardmeter.events." + kind + ".>"
			if kind == "" {
				subject = "cardmeter.events.>"
			}
		} else {
			kind = kind[:strings.LastIndex(kind, ".v")]
			subject = "cardmeter.events." + kind + ".*"
		}
		subs = append(subs, subject)
	}
	sort.Strings(subs)
	var out []string
	for _, a := range subs {
		covered := false
		for _, b := range subs {
			if a != b && covers(b, a) {
				covered = true
				break
			}
		}
		if !covered && (len(out) == 0 || out[len(out)-1] != a) {
			out = append(out, a)
		}
	}
	return out
}

// covers reports whether subject filter b matches everything a does.
func covers(b, a string) bool {
	bt, at := strings.Split(b, "."), strings.Split(a, ".")
	for i, t := range bt {
		if t == ">" {
			return len(at) > i
		}
		if i >= len(at) || (t != "*" && t != at[i]) || (t == "*" && at[i] == ">") {
			return false
		}
	}
	return len(at) == len(bt)
}

// NewSecret makes a signing secret: 32 random bytes, "whsec_" and base64.
func NewSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b), nil
}

// secretKey is the HMAC key of a secret: its base64 part, decoded.
func secretKey(secret string) ([]byte, error) {
	enc, ok := strings.CutPrefix(secret, "whsec_")
	if !ok {
		return nil, errors.New("a webhook secret starts with whsec_")
	}
	return base64.StdEncoding.DecodeString(enc)
}

// Signing are the secrets valid at now, newest first.
func (s *Subscription) Signing(now time.Time) []string {
	var out []string
	for _, k := range s.Secrets {
		if k.Expires == nil || now.Before(*k.Expires) {
			out = append(out, k.Key)
		}
	}
	return out
}

// ConsumerName is a subscription's durable consumer on EVENTS: one per
// generation (its creation), so that a webhook deleted and made again
// under the same id gets a consumer of its own.
func ConsumerName(s *Subscription) string {
	return "webhook-" + s.ID + "-" + strconv.FormatInt(max(s.CreatedAt.Unix(), 0), 10)
}

// consumerID is the subscription id of a webhook consumer's name.
func consumerID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "webhook-")
	i := strings.LastIndexByte(rest, '-')
	if !ok || i <= 0 {
		return "", false
	}
	if _, err := strconv.ParseUint(rest[i+1:], 10, 64); err != nil {
		return "", false
	}
	return rest[:i], true
}
