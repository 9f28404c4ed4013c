package webhook

import (
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{"": 0, "5": 5 * time.Second, " 30 ": 30 * time.Second, "-1": 0, "soon": 0,
		"Wed, 02 Dec 2026 06:01:00 GMT": time.Minute, "Wed, 02 Dec 2026 05:59:00 GMT": 0} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("%q: %s, want %s", v, got, want)
		}
	}
}

// An endpoint's Retry-After is outside input: never negative, never a panic.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"", "0", "120", "Wed, 02 Dec 2026 06:01:00 GMT", "99999999999999999999", "1e3", "-5"} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		if d := parseRetryAfter(v, now); d < 0 {
			t.Fatalf("%q: %s", v, d)
		}
	})
}

func TestConsumerNames(t *testing.T) {
	for _, s := range []*Subscription{{ID: "crm"}, {ID: "a-b-c", CreatedAt: time.Unix(1700000000, 0)}} {
		if id, ok := consumerID(ConsumerName(s)); !ok || id != s.ID {
			t.Errorf("%s: %q %v", ConsumerName(s), id, ok)
		}
	}
	if _, ok := consumerID("webhook-x"); ok {
		t.Error("a name without a generation read as a webhook's")
	}
}
