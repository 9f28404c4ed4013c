package card

import (
	"testing"
	"time"
)

func TestCycleAt(t *testing.T) {
	sh, _ := Zone("Asia/Shanghai")
	ts := func(s string, loc *time.Location) int64 {
		v, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return v.Unix()
	}
	cases := []struct {
		name       string
		at         string
		loc        *time.Location
		anchor     int
		start, end string
	}{
		{"31-day month, anchor 1", "2026-01-15 12:00", sh, 1, "2026-01-01 00:00", "2026-02-01 00:00"},
		{"28-day February", "2026-02-28 23:59", sh, 1, "2026-02-01 00:00", "2026-03-01 00:00"},
		{"29-day February (leap)", "2028-02-29 10:00", sh, 1, "2028-02-01 00:00", "2028-03-01 00:00"},
		{"30-day month", "2026-04-30 23:00", sh, 1, "2026-04-01 00:00", "2026-05-01 00:00"},
		{"anchor 27, before the anchor", "2026-03-26 23:59", sh, 27, "2026-02-27 00:00", "2026-03-27 00:00"},
		{"anchor 27, on the anchor", "2026-03-27 00:00", sh, 27, "2026-03-27 00:00", "2026-04-27 00:00"},
		{"anchor 27 across the year", "2026-12-30 00:00", sh, 27, "2026-12-27 00:00", "2027-01-27 00:00"},
		{"anchor 31 clamps in February", "2026-02-28 01:00", sh, 31, "2026-02-28 00:00", "2026-03-31 00:00"},
		{"anchor 31 clamps in leap February", "2028-02-29 01:00", sh, 31, "2028-02-29 00:00", "2028-03-31 00:00"},
		{"anchor 31 clamps in a 30-day month", "2026-04-30 05:00", sh, 31, "2026-04-30 00:00", "2026-05-31 00:00"},
		{"anchor 31 in January before the anchor", "2026-01-30 05:00", sh, 31, "2025-12-31 00:00", "2026-01-31 00:00"},
		{"anchor 30, 29-day February", "2028-03-01 00:00", sh, 30, "2028-02-29 00:00", "2028-03-30 00:00"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := CycleAt(ts(c.at, c.loc), c.loc, c.anchor)
			want := Cycle{ts(c.start, c.loc), ts(c.end, c.loc)}
			if got != want {
				t.Fatalf("CycleAt(%s) = [%s, %s), want [%s, %s)", c.at,
					time.Unix(got.Start, 0).In(c.loc), time.Unix(got.End, 0).In(c.loc), c.start, c.end)
			}
		})
	}
}

// The boundary of a cycle is midnight in the plan's zone, not in UTC: at
// 2026-01-31 17:00 UTC it is already February in Shanghai (UTC+8) but still
// January in New York.
func TestCycleBoundaryAcrossTimeZones(t *testing.T) {
	at := time.Date(2026, 1, 31, 17, 0, 0, 0, time.UTC).Unix()
	sh, _ := Zone("Asia/Shanghai")
	ny, _ := Zone("America/New_York")
	if c := CycleAt(at, sh, 1); time.Unix(c.Start, 0).In(sh).Month() != time.February {
		t.Fatalf("Shanghai cycle starts %s, want February", time.Unix(c.Start, 0).In(sh))
	}
	if c := CycleAt(at, ny, 1); time.Unix(c.Start, 0).In(ny).Month() != time.January {
		t.Fatalf("New York cycle starts %s, want January", time.Unix(c.Start, 0).In(ny))
	}
	// and the Shanghai cycle starts at 16:00 UTC the day before
	if c := CycleAt(at, sh, 1); c.Start != time.Date(2026, 1, 31, 16, 0, 0, 0, time.UTC).Unix() {
		t.Fatalf("Shanghai February starts at %s UTC", time.Unix(c.Start, 0).UTC())
	}
}

// A remembered record keeps its cycle start exactly, in every zone (offsets
// are multiples of 15 minutes), and enough of its content hash.
func TestSeenRecordPacking(t *testing.T) {
	for _, zone := range []string{"Asia/Shanghai", "Asia/Kathmandu", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham"} {
		loc, err := Zone(zone)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range []int64{unixT("2026-01-15T12:00:00Z"), unixT("2099-07-31T23:59:00Z")} {
			c := CycleAt(at, loc, 27)
			s := packSeen(0xDEADBEEFCAFEF00D, c.Start)
			if s.cycleStart() != c.Start || !s.sameContent(0xDEADBEEFCAFEF00D) || s.sameContent(0xDEADBEEFCAFEF00D^1<<50) {
				t.Fatalf("%s %d: packed %x unpacks to %d", zone, c.Start, uint64(s), s.cycleStart())
			}
		}
	}
}

func unixT(s string) int64 {
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return v.Unix()
}
