package cdr

import (
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	for _, s := range []string{"2026-03-10T08:00:00Z", "2026-03-10T08:00:00+08:00", "2024-02-29T23:59:59-05:30", "0001-01-01T00:00:00Z",
		"1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2000-02-29T12:00:00Z", "2100-12-31T00:00:00+14:00"} {
		want, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		u, ok := parseRFC3339Fast(s)
		if !ok || u != want.Unix() {
			t.Errorf("%s: fast path %d, %v; want %d", s, u, ok, want.Unix())
		}
	}
	for _, s := range []string{"2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-03-10T24:00:00Z", "2026-03-10 08:00:00Z",
		"2026-03-10T08:00:00", "2026-03-10T08:00:00.5Z", "2026-03-10T08:00:00+0800", "2026-03-10T08:00:60Z"} {
		if _, ok := parseRFC3339Fast(s); ok {
			t.Errorf("%s: the fast path took it", s)
		}
	}
	// the slow path still takes what time.Parse takes
	if u, ok := parseTime("2026-03-10T08:00:00.5Z"); !ok || u != 1773129600 {
		t.Errorf("fractional seconds: %d, %v", u, ok)
	}
}

// Whatever the fast path takes, time.Parse takes to the same second.
func FuzzParseTimeAgrees(f *testing.F) {
	for _, s := range []string{"2026-03-10T08:00:00Z", "2026-03-10T08:00:00+08:00", "2024-02-29T23:59:59-05:30", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, ok := parseRFC3339Fast(s)
		if ub, okb := parseRFC3339Fast([]byte(s)); ub != u || okb != ok {
			t.Fatalf("%q: string and bytes differ", s)
		}
		if !ok {
			return
		}
		want, err := time.Parse(time.RFC3339, s)
		if err != nil || want.Unix() != u {
			t.Fatalf("%q: fast path %d; time.Parse %v, %v", s, u, want.Unix(), err)
		}
	})
}
