package card

import (
	"math/bits"
	"strconv"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// Warning names (DOMAIN.md "Early warnings").
const (
	WarnForecast   = "forecast"    // the quota will run out before the cycle ends
	WarnLowBalance = "low_balance" // account balance below its threshold
)

// ExpiryWarningDays are the days ahead of the validity end that warn.
var ExpiryWarningDays = [...]int64{30, 7, 1}

// ForecastMinElapsed is how long into a cycle usage must run before its
// rate forecasts anything: earlier, one record is too little to go on.
const ForecastMinElapsed = 3600

// warnings is the set of a card's active warnings: bits 0-7 the plan's
// usage thresholds by index, then the forecast, then expiry 30/7/1 days.
type warnings uint32

const (
	bitForecast = 8
	bitExpiry   = 9
)

func (w warnings) has(bit int) bool { return w&(1<<bit) != 0 }

func usageWarning(pct int) string { return "usage_" + strconv.Itoa(pct) }

func expiryWarning(i int) string {
	return "expiry_" + strconv.FormatInt(ExpiryWarningDays[i], 10) + "d"
}

// names lists the active warnings.
func (w warnings) names(pl *plan) []string {
	var out []string
	for i, pct := range pl.thresholds() {
		if i < bitForecast && w.has(i) {
			out = append(out, usageWarning(pct))
		}
	}
	if w.has(bitForecast) {
		out = append(out, WarnForecast)
	}
	for i := range ExpiryWarningDays {
		if w.has(bitExpiry + i) {
			out = append(out, expiryWarning(i))
		}
	}
	return out
}

func (c *Card) warn(bit int, name string, at int64, cause string, pl *plan) Emitted {
	c.warned |= 1 << bit
	c.dirty = true
	e := c.emit(EmitWarning, at, cause, pl)
	e.Warning = name
	return e
}

func (c *Card) resolve(bit int, name string, at int64, cause string, pl *plan, out []Emitted) []Emitted {
	if !c.warned.has(bit) {
		return out
	}
	c.warned &^= 1 << bit
	c.dirty = true
	e := c.emit(EmitWarningResolved, at, cause, pl)
	e.Warning = name
	return append(out, e)
}

// atLeastPct reports usage ≥ pct% of quota without overflow.
func atLeastPct(usage, quota uint64, pct int) bool {
	p := uint64(pct)
	return usage >= (quota/100)*p+(quota%100)*p/100
}

// usageWarnings fires each usage threshold the card's cycle usage crossed,
// once per cycle, and the forecast from the cycle's rate of use so far. It
// runs for every record, so the cause (record r of chunk h) is built only
// when a warning fires.
func (c *Card) usageWarnings(at int64, h *cdr.ChunkHeader, r *cdr.Record, pl *plan, out []Emitted) []Emitted {
	if pl.QuotaBytes == 0 || c.poolID != "" {
		return out
	}
	for i, pct := range pl.thresholds() {
		if i >= bitForecast || c.warned.has(i) || !atLeastPct(c.usage, pl.QuotaBytes, pct) {
			continue
		}
		out = append(out, c.warn(i, usageWarning(pct), at, cause(h, r), pl))
	}
	if c.warned.has(bitForecast) || c.usage == 0 || c.usage >= pl.QuotaBytes {
		return out
	}
	elapsed := at - c.cycle.Start
	if elapsed < ForecastMinElapsed || at >= c.cycle.End {
		return out
	}
	// At the rate so far, the quota runs out elapsed·quota/usage seconds
	// into the cycle.
	hi, lo := bits.Mul64(uint64(elapsed), pl.QuotaBytes)
	if hi >= c.usage {
		return out // beyond any date
	}
	secs, _ := bits.Div64(hi, lo, c.usage)
	if secs >= uint64(c.cycle.End-c.cycle.Start) {
		return out
	}
	e := c.warn(bitForecast, WarnForecast, at, cause(h, r), pl)
	e.Expected = c.cycle.Start + int64(secs)
	return append(out, e)
}

// expiryWarnings fires each expiry warning whose day has come, once per
// validity period (a renewal re-arms them).
func (p *Partition) expiryWarnings(c *Card, t int64, cause string, out []Emitted) []Emitted {
	if c.validUntil == 0 || c.expiredAt != 0 {
		return out
	}
	pl := p.plans[c.planID]
	for i, d := range ExpiryWarningDays {
		if c.warned.has(bitExpiry+i) || c.validUntil-t > d*86400 {
			continue
		}
		out = append(out, c.warn(bitExpiry+i, expiryWarning(i), t, cause, pl))
	}
	return out
}

// rearmCycleWarnings resolves the warnings of a closed cycle.
func (p *Partition) rearmCycleWarnings(c *Card, t int64, cause string, pl *plan, out []Emitted) []Emitted {
	for i, pct := range pl.thresholds() {
		if i < bitForecast {
			out = c.resolve(i, usageWarning(pct), t, cause, pl, out)
		}
	}
	// thresholds of an older plan version may linger beyond the current list
	if c.warned&(1<<bitForecast-1) != 0 {
		c.warned &^= (1 << bitForecast) - 1
		c.dirty = true
	}
	return c.resolve(bitForecast, WarnForecast, t, cause, pl, out)
}

func (p *Partition) resolveExpiryWarnings(c *Card, t int64, cause string, pl *plan, out []Emitted) []Emitted {
	for i := range ExpiryWarningDays {
		out = c.resolve(bitExpiry+i, expiryWarning(i), t, cause, pl, out)
	}
	return out
}

func (p *Partition) resolveAll(c *Card, t int64, cause string, pl *plan, out []Emitted) []Emitted {
	out = p.rearmCycleWarnings(c, t, cause, pl, out)
	return p.resolveExpiryWarnings(c, t, cause, pl, out)
}
