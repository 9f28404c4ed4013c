package card

import "time"

// pool is a data pool (流量池): cards of one account share its quota. The
// pool has its own monthly cycle. When the pool's usage goes over its
// quota, every card of the pool that opted in to the over-quota stop stops
// with reason pool; the stop clears at the pool's next cycle or when the
// quota grows above the usage. A pooled card is governed by the pool's
// quota, not its plan's.
type pool struct {
	PoolChanged
	account   string
	loc       *time.Location
	anchor    int
	cycle     Cycle
	usage     uint64
	exhausted bool
	dirty     bool // changed since the last checkpoint
}

func (p *Partition) applyPool(in *Input, out []Emitted) []Emitted {
	pc := *in.Pool
	loc, err := Zone(pc.TimeZone)
	if err != nil || pc.CycleAnchorDay < 0 || pc.CycleAnchorDay > 31 {
		return append(out, refused(in, "", RefusedInvalid, "pool "+pc.PoolID+": bad time_zone or cycle_anchor_day"))
	}
	po := p.pools[pc.PoolID]
	if po != nil && po.account != pc.AccountID {
		return append(out, refused(in, "", RefusedOtherAccount, "pool "+pc.PoolID+" belongs to account "+po.account))
	}
	now := p.at(in)
	if po == nil {
		po = &pool{account: pc.AccountID}
		p.pools[pc.PoolID] = po
		p.poolOrd = append(p.poolOrd, po)
		p.account(pc.AccountID)
	}
	po.PoolChanged, po.loc, po.anchor, po.dirty = pc, loc, max(pc.CycleAnchorDay, 1), true
	if po.cycle.End == 0 {
		po.cycle = CycleAt(now, po.loc, po.anchor)
	}
	return p.poolRule(po, now, "event:"+in.ID, out)
}

// poolRule raises or clears the pool stop on the pool's opted-in cards.
func (p *Partition) poolRule(po *pool, at int64, cause string, out []Emitted) []Emitted {
	over := po.usage > po.QuotaBytes
	if over == po.exhausted {
		return out
	}
	po.exhausted, po.dirty = over, true
	for _, c := range p.accounts[po.account].cards {
		if c.poolID != po.PoolID || c.cancelled || !c.autoStop {
			continue
		}
		pl := p.plans[c.planID]
		n := len(out)
		if over {
			out = c.raise(ReasonPool, at, cause, pl, out)
		} else {
			out = c.clear(ReasonPool, at, cause, pl, out)
		}
		for i := n; i < len(out); i++ {
			out[i].Pool = po.PoolID
		}
	}
	return out
}

// rollPool starts the pool's new cycle when its cycle has ended.
func (p *Partition) rollPool(po *pool, t int64, cause string, out []Emitted) []Emitted {
	if po.cycle.End > t {
		return out
	}
	po.cycle = CycleAt(t, po.loc, po.anchor)
	po.usage, po.dirty = 0, true
	return p.poolRule(po, po.cycle.Start, cause, out)
}

// PoolView is a read-only copy of a pool's state.
type PoolView struct {
	PoolID     string
	AccountID  string
	QuotaBytes uint64
	UsageBytes uint64
	Cycle      Cycle
	Exhausted  bool
	Cards      int
	TimeZone   string
}

// Pool returns a view of a pool.
func (p *Partition) Pool(id string) (PoolView, bool) {
	po, ok := p.pools[id]
	if !ok {
		return PoolView{}, false
	}
	return p.poolView(po, true), true
}

// poolView is a pool's view; count: with its cards counted (a pass over
// its account's cards).
func (p *Partition) poolView(po *pool, count bool) PoolView {
	v := PoolView{PoolID: po.PoolID, AccountID: po.account, QuotaBytes: po.QuotaBytes, UsageBytes: po.usage,
		Cycle: po.cycle, Exhausted: po.exhausted, TimeZone: po.loc.String()}
	if !count {
		return v
	}
	for _, c := range p.accounts[po.account].cards {
		if c.poolID == po.PoolID && !c.cancelled {
			v.Cards++
		}
	}
	return v
}
