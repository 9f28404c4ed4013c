package card

import (
	"math/bits"
	"slices"
)

// Census is how many cards a partition has in each status, how many
// stopped ones carry each stop reason (a card stopped for two reasons
// counts under both), the in-service cards nearest their quota, and those
// whose quota runs out before their cycle ends at the rate so far.
type Census struct {
	InService int            `json:"in_service"`
	Stopped   int            `json:"stopped"`
	Cancelled int            `json:"cancelled"`
	ByReason  map[string]int `json:"by_reason"` // reason name -> stopped cards carrying it
	// Warnings counts the cards (not cancelled) carrying each active
	// warning (usage_80, forecast, expiry_7d...).
	Warnings map[string]int `json:"warnings"`
	Nearest  []Near         `json:"nearest,omitempty"`
	RunOut   []Near         `json:"run_out,omitempty"`
	At       int64          `json:"at"` // the log time it was taken at
}

// Near is a card and its cycle's usage against its quota; RunOutAt, in a
// forecast, is when the quota runs out at the cycle's rate so far.
type Near struct {
	ICCID      string `json:"iccid"`
	AccountID  string `json:"account_id"`
	UsageBytes uint64 `json:"usage_bytes"`
	QuotaBytes uint64 `json:"quota_bytes"`
	CycleEnd   int64  `json:"cycle_end"`
	RunOutAt   int64  `json:"run_out_at,omitempty"`
}

// CensusTop is how many cards Nearest and RunOut keep.
const CensusTop = 20

// Census counts the partition's cards. It reads every card once: the
// projector takes it every 15 s between batches (about 2 ms per hundred
// thousand cards on this project's 2-core machine; BenchmarkCensus).
func (p *Partition) Census() Census {
	c := Census{At: p.now}
	var by [8]int // by reason bit
	warned := map[*plan]*[32]int{}
	for _, cd := range p.order {
		if cd.warned != 0 && !cd.cancelled {
			pl := p.plans[cd.planID]
			n := warned[pl]
			if n == nil {
				n = new([32]int)
				warned[pl] = n
			}
			for w := cd.warned; w != 0; w &= w - 1 {
				n[bits.TrailingZeros32(uint32(w))]++
			}
		}
		switch {
		case cd.cancelled:
			c.Cancelled++
			continue
		case cd.reasons != 0:
			c.Stopped++
			for b := 0; b < 8; b++ {
				if cd.reasons&(1<<b) != 0 {
					by[b]++
				}
			}
			continue
		}
		c.InService++
		pl := p.plans[cd.planID]
		if pl == nil || pl.QuotaBytes == 0 || cd.usage == 0 {
			continue
		}
		n := Near{ICCID: cd.iccid, AccountID: cd.account, UsageBytes: cd.usage, QuotaBytes: pl.QuotaBytes, CycleEnd: cd.cycle.End}
		c.Nearest = keepTop(c.Nearest, n, nearer)
		// at the cycle's rate so far, the quota runs out before its end
		if elapsed := p.now - cd.cycle.Start; elapsed > 0 && cd.usage < pl.QuotaBytes {
			runOut := cd.cycle.Start + int64(float64(pl.QuotaBytes)/float64(cd.usage)*float64(elapsed))
			if runOut < cd.cycle.End {
				n.RunOutAt = runOut
				c.RunOut = keepTop(c.RunOut, n, sooner)
			}
		}
	}
	c.Warnings = map[string]int{}
	for pl, n := range warned {
		for bit, k := range n {
			if k > 0 {
				for _, name := range warnings(1 << bit).names(pl) {
					c.Warnings[name] += k
				}
			}
		}
	}
	c.ByReason = make(map[string]int, len(reasonNames))
	for _, n := range reasonNames {
		for b := 0; b < 8; b++ {
			if Reason(1<<b) == n.r {
				c.ByReason[n.name] = by[b]
			}
		}
	}
	return c
}

// nearer orders cards by how much of their quota they used, most first.
func nearer(a, b Near) int {
	// a.used/a.quota > b.used/b.quota, without rounding
	x, y := float64(a.UsageBytes)*float64(b.QuotaBytes), float64(b.UsageBytes)*float64(a.QuotaBytes)
	switch {
	case x > y:
		return -1
	case x < y:
		return 1
	}
	return compareStrings(a.ICCID, b.ICCID)
}

// sooner orders forecasts by when the quota runs out, soonest first.
func sooner(a, b Near) int {
	switch {
	case a.RunOutAt < b.RunOutAt:
		return -1
	case a.RunOutAt > b.RunOutAt:
		return 1
	}
	return compareStrings(a.ICCID, b.ICCID)
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// keepTop puts n into the sorted list when it is among the first
// CensusTop by cmp.
func keepTop(list []Near, n Near, cmp func(a, b Near) int) []Near {
	if len(list) == CensusTop && cmp(n, list[len(list)-1]) >= 0 {
		return list
	}
	i, _ := slices.BinarySearchFunc(list, n, cmp)
	list = slices.Insert(list, i, n)
	if len(list) > CensusTop {
		list = list[:CensusTop]
	}
	return list
}

// Add sums two censuses (of several partitions), keeping the first
// CensusTop of the nearest and the forecasts.
func (c Census) Add(o Census) Census {
	out := Census{InService: c.InService + o.InService, Stopped: c.Stopped + o.Stopped, Cancelled: c.Cancelled + o.Cancelled,
		ByReason: map[string]int{}, Warnings: map[string]int{}, At: max(c.At, o.At)}
	for k, v := range c.Warnings {
		out.Warnings[k] += v
	}
	for k, v := range o.Warnings {
		out.Warnings[k] += v
	}
	for k, v := range c.ByReason {
		out.ByReason[k] += v
	}
	for k, v := range o.ByReason {
		out.ByReason[k] += v
	}
	for _, n := range append(slices.Clone(c.Nearest), o.Nearest...) {
		out.Nearest = keepTop(out.Nearest, n, nearer)
	}
	for _, n := range append(slices.Clone(c.RunOut), o.RunOut...) {
		out.RunOut = keepTop(out.RunOut, n, sooner)
	}
	return out
}
