package card

import (
	"fmt"
	"testing"
	"time"
	"unsafe"
)

// Usage anomalies: after a week of quiet days, a day over both the floor
// (50 MiB) and five times the week's median is told once, naming the
// record that crossed; the rest of that day is not told again; the next
// such day is; a day over the multiple but under the floor, or over the
// floor but under the multiple, is not.
func TestUsageAnomalyOncePerDay(t *testing.T) {
	w := newWorld(t, "2026-03-01T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "p", QuotaBytes: 1 << 40})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "p"})
	w.card(CardProvisioned{ICCID: ic(2), AccountID: "a", PlanID: "p"})
	for d := 1; d <= 7; d++ {
		w.use(ic(1), fmt.Sprint("q", d), fmt.Sprintf("2026-03-%02dT10:00:00+08:00", d), 4*mb)  // a quiet week: median 4 MB
		w.use(ic(2), fmt.Sprint("q", d), fmt.Sprintf("2026-03-%02dT10:00:00+08:00", d), 20*mb) // a busy one: median 20 MB
	}
	w.take()
	// day 8: card 1 goes to 30 MB (7.5 times its median, under the floor), then 55 MB
	w.use(ic(1), "s1", "2026-03-08T01:00:00+08:00", 30*mb)
	if out := w.take(); len(of(out, EmitUsageAnomaly)) != 0 {
		t.Fatalf("under the floor: %+v", out)
	}
	w.use(ic(1), "s2", "2026-03-08T02:00:00+08:00", 25*mb)
	out := w.take()
	an := of(out, EmitUsageAnomaly)
	if len(an) != 1 || an[0].Cause != "record:cmcc/s2" || an[0].DayBytes != 55*mb || an[0].Median != 4*mb || an[0].Detail != "2026-03-08" || len(of(out, EmitStopped)) != 0 {
		t.Fatalf("the anomaly: %+v", out)
	}
	w.wantStatus(ic(1), InService) // not opted in to the stop
	w.use(ic(1), "s3", "2026-03-08T03:00:00+08:00", 100*mb)
	if out := w.take(); len(of(out, EmitUsageAnomaly)) != 0 {
		t.Fatalf("told twice in a day: %+v", out)
	}
	// card 2: 90 MB is over the floor but 4.5 times its median: no anomaly
	w.use(ic(2), "s1", "2026-03-08T04:00:00+08:00", 90*mb)
	if out := w.take(); len(of(out, EmitUsageAnomaly)) != 0 {
		t.Fatalf("under the multiple: %+v", out)
	}
	// the next day, card 1 again far above (its median is still 4 MB): told again
	w.use(ic(1), "t1", "2026-03-09T01:00:00+08:00", 60*mb)
	if an := of(w.take(), EmitUsageAnomaly); len(an) != 1 || an[0].Detail != "2026-03-09" {
		t.Fatalf("the next day: %+v", an)
	}
}

// A card opted in to the stop stops for "anomaly", which a resume lifts; a
// new card has no week to judge by; a late record counts in its own day;
// the day is the plan's (a UTC plan's day starts eight hours after
// Shanghai's).
func TestUsageAnomalyStopNewCardsAndDays(t *testing.T) {
	w := newWorld(t, "2026-03-01T00:00:00+08:00")
	w.plan(PlanChanged{PlanID: "strict", QuotaBytes: 1 << 40, StopOnAnomaly: true, AnomalyMinBytes: 10 * mb, AnomalyFactor: 3})
	w.plan(PlanChanged{PlanID: "utc", QuotaBytes: 1 << 40, TimeZone: "UTC"})
	w.card(CardProvisioned{ICCID: ic(1), AccountID: "a", PlanID: "strict"})
	w.card(CardProvisioned{ICCID: ic(2), AccountID: "a", PlanID: "strict"}) // new: first used on day 8
	w.card(CardProvisioned{ICCID: ic(3), AccountID: "a", PlanID: "utc"})
	for d := 1; d <= 7; d++ {
		w.use(ic(1), fmt.Sprint("q", d), fmt.Sprintf("2026-03-%02dT10:00:00+08:00", d), 2*mb)
		w.use(ic(3), fmt.Sprint("q", d), fmt.Sprintf("2026-03-%02dT10:00:00Z", d), 2*mb)
	}
	w.take()
	w.use(ic(2), "n1", "2026-03-08T10:00:00+08:00", 500*mb)
	if out := w.take(); len(of(out, EmitUsageAnomaly)) != 0 {
		t.Fatalf("a new card judged without a week behind it: %+v", out)
	}
	// a late record of day 7 lifts card 1's week: 2,2,2,2,2,2,14 MB, median still 2
	w.use(ic(1), "late", "2026-03-07T11:00:00+08:00", 12*mb)
	w.use(ic(1), "s1", "2026-03-08T10:00:00+08:00", 11*mb)
	out := w.take()
	if an := of(out, EmitUsageAnomaly); len(an) != 1 || an[0].Median != 2*mb {
		t.Fatalf("the anomaly: %+v", out)
	}
	if st := of(out, EmitStopped); len(st) != 1 || st[0].Reason != ReasonAnomaly || st[0].Cause != "record:cmcc/s1" {
		t.Fatalf("the stop: %+v", out)
	}
	w.wantStatus(ic(1), Stopped, ReasonAnomaly)
	w.command(TypeResumeRequested, ic(1), "res")
	w.wantStatus(ic(1), InService)
	// UTC plan: 2026-03-08T06:00+08:00 is still 2026-03-07 in UTC, counted with that day
	w.use(ic(3), "u1", "2026-03-08T06:00:00+08:00", 80*mb)
	if out := w.take(); len(of(out, EmitUsageAnomaly)) != 0 {
		t.Fatalf("a day of the plan's zone: %+v", out)
	}
	w.use(ic(3), "u2", "2026-03-08T09:00:00+08:00", 60*mb) // 01:00 UTC on the 8th
	if an := of(w.take(), EmitUsageAnomaly); len(an) != 1 || an[0].Detail != "2026-03-08" || an[0].DayBytes != 60*mb {
		t.Fatalf("the UTC day: %+v", an)
	}
}

// The ring keeps a week: a gap of days counts as quiet days, a gap of more
// than a week forgets the card's past (but not what it has seen: it is
// still judged).
func TestDayRingRolls(t *testing.T) {
	var r dayRing
	r.roll(100)
	r.today = 10 << 10
	r.roll(101)
	r.today = 20 << 10
	r.roll(103) // day 102 without usage
	if r.past != [7]dayBytes{0, 20, 10, 0, 0, 0, 0} || r.known != 3 || r.day != 103 || r.today != 0 {
		t.Fatalf("after a gap: %+v", r)
	}
	r.today = 30 << 10
	r.roll(110)
	if r.past != [7]dayBytes{0, 0, 0, 0, 0, 0, 30} || r.known != 7 {
		t.Fatalf("a week on: %+v", r)
	}
	r.roll(120)
	if r.past != [7]dayBytes{} || r.known != 7 || r.median() != 0 {
		t.Fatalf("more than a week on: %+v", r)
	}
	r.past = [7]dayBytes{9, 1, 8, 2, 7, 3, 5}
	if r.median() != 5 || r.past[0] != 9 {
		t.Fatalf("median %d of %v (the ring unsorted)", r.median(), r.past)
	}
}

// A day's bytes in 16 bits: exact to the KiB below 2 MiB, within a tenth
// of a percent above, in the order of the values.
func TestDayBytes(t *testing.T) {
	prev := dayBytes(0)
	for _, b := range []uint64{0, 1023, 1024, 2047 << 10, 2048 << 10, 5 << 20, 50 << 20, 123456789, 1 << 40, 1 << 50} {
		d := toDayBytes(b)
		got := d.bytes()
		if diff := float64(got) - float64(b); diff > float64(b)/1000+512 || -diff > float64(b)/1000+512 {
			t.Errorf("%d bytes come back as %d", b, got)
		}
		if d < prev {
			t.Errorf("%d bytes code %d, below the smaller value's %d", b, d, prev)
		}
		prev = d
	}
	if d := toDayBytes(3 << 20).add(1 << 20); d.bytes() != 4<<20 {
		t.Errorf("3 MiB and 1 MiB: %d", d.bytes())
	}
}

// A card fits in 480 bytes, Go's size class. A field that takes it past costs
// every card the next class (512 bytes: 32 MB at a million cards).
func TestCardFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(Card{}); n > 480 {
		t.Fatalf("a card is %d bytes, past the 480-byte size class", n)
	}
	if n := unsafe.Sizeof(dayRing{}); n != 32 {
		t.Fatalf("a day ring is %d bytes", n)
	}
}

// dayOf is the date in the plan's zone, across daylight saving changes and
// zones that moved: every hour of three years in each test zone.
func TestDayOfIsTheLocalDate(t *testing.T) {
	for _, zone := range []string{"Asia/Shanghai", "UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Apia"} {
		loc, err := Zone(zone)
		if err != nil {
			t.Fatal(err)
		}
		pl := &plan{loc: loc}
		start := time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
		for h := int64(0); h < 3*366*24; h += 1 {
			ts := start + h*3600 + h%7*60 // and some minutes past
			y, m, d := time.Unix(ts, 0).In(loc).Date()
			want := int32(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
			if got := pl.dayOf(ts); got != want {
				t.Fatalf("%s at %s: day %d, the local date is day %d", zone, time.Unix(ts, 0).In(loc), got, want)
			}
		}
		// and backwards in time: the cached span is left when a record is older
		if got, want := pl.dayOf(start-86400*400), int32((start-86400*400+offsetAt(loc, start-86400*400))/86400); got != want {
			t.Fatalf("%s: an older day %d, want %d", zone, got, want)
		}
	}
}

func offsetAt(loc *time.Location, ts int64) int64 {
	_, off := time.Unix(ts, 0).In(loc).Zone()
	return int64(off)
}
