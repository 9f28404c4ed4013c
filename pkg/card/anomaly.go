package card

import (
	"math"
	"strconv"
	"time"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// Usage anomalies: a card whose usage in a day (of its plan's time zone)
// passes both a floor (the plan's anomaly_min_bytes, default 50 MiB) and a
// multiple (anomaly_factor, default 5) of the median of its 7 days before
// emits EmitUsageAnomaly, once per day, naming the record that crossed;
// when the card or its plan opts in (stop_on_anomaly) it also stops for
// ReasonAnomaly, which an operator's resume clears.
//
// A card keeps a fixed ring: the bytes of its current day and the KiB of
// the 7 days before it. Its day rolls over when a record of a later day
// arrives (nothing visits every card at midnight). A record of one of the
// 7 days before counts in its day; an older one in none. A card is judged
// only once it has 7 days behind its current one (from its first counted
// record): a new card has no median to go by.

// Defaults of the anomaly rule (a plan's zero fields).
const (
	DefaultAnomalyMinBytes = 50 << 20
	DefaultAnomalyFactor   = 5.0
	anomalyDays            = 7
	maxDay                 = 1 << 20 // a day number past any time a record can carry (year 4840)
)

// dayRing is a card's recent daily usage: 32 bytes.
type dayRing struct {
	today uint64                // bytes of the current day
	past  [anomalyDays]dayBytes // the days before it, the day before first
	day   int32                 // the current day: days since 1970-01-01 in the plan's zone; 0: none yet
	known uint8                 // how many of the days before it the card has been counted for (≤ 7)
	told  bool                  // the current day's anomaly was told
}

// dayBytes is a day's usage in 16 bits, as a float of KiB: an 11-bit
// mantissa and a 5-bit shift, so within a tenth of a percent of the day's
// bytes from 0 to petabytes. Its order is the order of the values, so a
// median of codes is the code of the median.
type dayBytes uint16

// toDayBytes encodes b bytes (to the nearest KiB, then the nearest code).
func toDayBytes(b uint64) dayBytes {
	k := (b + 512) >> 10
	s := uint(0)
	for k >= 2048 {
		k = (k + 1) >> 1 // rounds half up
		s++
	}
	if s > 31 {
		return math.MaxUint16
	}
	return dayBytes(s<<11 | uint(k))
}

// bytes decodes the day's usage.
func (d dayBytes) bytes() uint64 { return uint64(d&2047) << (d >> 11) << 10 }

// add is the day with b more bytes.
func (d dayBytes) add(b uint64) dayBytes { return toDayBytes(d.bytes() + b) }

// dayOf is the day (in the plan's zone) of a Unix time. The plan keeps
// the zone's offset and the span it holds for (time.ZoneBounds): within
// it a day is an addition and a division, as for most records (Asia/
// Shanghai's span has no end).
func (pl *plan) dayOf(t int64) int32 {
	if t < pl.zoneLo || t >= pl.zoneHi {
		lt := time.Unix(t, 0).In(pl.loc)
		_, off := lt.Zone()
		lo, hi := lt.ZoneBounds()
		pl.zoneOff, pl.zoneLo, pl.zoneHi = int64(off), math.MinInt64, math.MaxInt64
		if !lo.IsZero() {
			pl.zoneLo = lo.Unix()
		}
		if !hi.IsZero() {
			pl.zoneHi = hi.Unix()
		}
	}
	local := t + pl.zoneOff
	d := local / 86400
	if local%86400 < 0 {
		d--
	}
	return int32(d)
}

// roll moves the ring to day d (later than its current day).
func (r *dayRing) roll(d int32) {
	if r.day == 0 {
		r.day = d
		return
	}
	n := int64(d) - int64(r.day) // > 0: the caller rolls forward only
	if n >= anomalyDays+1 {
		r.past = [anomalyDays]dayBytes{}
	} else {
		copy(r.past[n:], r.past[:anomalyDays-n])
		for i := int64(1); i < n; i++ {
			r.past[i-1] = 0
		}
		r.past[n-1] = toDayBytes(r.today)
	}
	r.known = uint8(min(int64(r.known)+n, anomalyDays))
	r.today, r.day, r.told = 0, d, false
}

// median is the median day of the days before the current one.
func (r *dayRing) median() dayBytes {
	s := r.past
	for i := 1; i < len(s); i++ { // insertion sort of seven
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[anomalyDays/2]
}

// anomalyRule is the plan's floor and factor, and whether an anomaly stops
// the card (the card's or its plan's option).
func (c *Card) anomalyRule(pl *plan) (floor uint64, factor float64, stop bool) {
	floor, factor = pl.AnomalyMinBytes, pl.AnomalyFactor
	if floor == 0 {
		floor = DefaultAnomalyMinBytes
	}
	if factor == 0 {
		factor = DefaultAnomalyFactor
	}
	return floor, factor, c.stopOnAnomaly || pl.StopOnAnomaly
}

// checkAnomaly counts a counted record in its day and judges the day.
func (p *Partition) checkAnomaly(c *Card, pl *plan, at int64, h *cdr.ChunkHeader, r *cdr.Record, out []Emitted) []Emitted {
	d := pl.dayOf(r.Start)
	ring := &c.days
	switch {
	case d > ring.day:
		ring.roll(d)
	case d < ring.day:
		if back := int64(ring.day) - int64(d); back <= anomalyDays {
			ring.past[back-1] = ring.past[back-1].add(r.Bytes())
		}
		return out
	}
	ring.today += r.Bytes()
	if ring.told || ring.known < anomalyDays {
		return out
	}
	floor, factor, stop := c.anomalyRule(pl)
	if ring.today <= floor {
		return out
	}
	median := ring.median().bytes()
	if float64(ring.today) <= factor*float64(median) {
		return out
	}
	ring.told = true
	e := c.emit(EmitUsageAnomaly, at, cause(h, r), pl)
	e.Bytes, e.DayBytes, e.Median = r.Bytes(), ring.today, median
	e.Detail = dayString(d)
	out = append(out, e)
	if stop {
		out = c.raise(ReasonAnomaly, at, e.Cause, pl, out)
	}
	return out
}

// dayString is a day number as YYYY-MM-DD.
func dayString(d int32) string {
	y, m, dd := time.Unix(int64(d)*86400, 0).UTC().Date()
	return strconv.Itoa(y) + "-" + twoDigits(int(m)) + "-" + twoDigits(dd)
}

func twoDigits(n int) string {
	if n < 10 {
		return "0" + strconv.Itoa(n)
	}
	return strconv.Itoa(n)
}
