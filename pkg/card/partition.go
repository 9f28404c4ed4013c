// Package card is the pure domain core of cardmeter: the state of the cards
// of one partition (a set of accounts) and the fold that applies the log's
// events to it, in log order, returning the events it emits.
//
// The fold reads no clock, does no I/O, draws no random numbers and starts
// no goroutines: time comes in events, so replaying a log gives the same
// state and the same emitted events, byte for byte. A Partition is not safe
// for concurrent use; its owner (one projector per partition) serializes
// access.
package card

import (
	"fmt"
	"strconv"
	"time"
)

// Partition is the folded state of the accounts and cards of one partition.
type Partition struct {
	now   int64 // the log's time: the latest clock tick applied
	plans map[string]*plan
	cards map[string]*Card
	order []*Card // cards in provisioning order: the order ticks visit them
}

type plan struct {
	PlanChanged
	loc    *time.Location
	anchor int
}

// Card is the state of one card. Its fields change only through the fold.
type Card struct {
	iccid, account, planID, carrier string
	imsi, msisdn, pool              string
	autoStop                        bool
	validFrom, validUntil           int64
	cycle                           Cycle
	usage                           uint64
	overshoot                       uint64 // usage past quota when the over-quota stop fired
	reasons                         Reasons
	seen                            map[uint64]seenRecord // record ids counted, by carrier+id hash
}

type seenRecord struct {
	content    uint64 // cdr.Record.ContentHash of the first arrival
	cycleStart int64  // the cycle it counted in
}

// RetainedCycles is how many closed cycles a card remembers record ids for.
// A record older than that is refused as too late, so a record id is never
// counted twice however late it is re-sent.
const RetainedCycles = 2

// NewPartition returns empty state.
func NewPartition() *Partition {
	return &Partition{plans: map[string]*plan{}, cards: map[string]*Card{}}
}

// Now is the log's time as this partition has seen it.
func (p *Partition) Now() int64 { return p.now }

// Cards is the number of cards.
func (p *Partition) Cards() int { return len(p.cards) }

// Apply folds one non-usage input event, appending what it emits to out.
// It returns ErrUnknownInput for a type it does not know; an event that
// breaks a rule is not applied and emits EmitInputRefused.
func (p *Partition) Apply(in *Input, out []Emitted) ([]Emitted, error) {
	switch in.Type {
	case TypePlanChanged:
		if in.Plan == nil {
			return out, fmt.Errorf("%w: %s without plan", ErrUnknownInput, in.Type)
		}
		return p.applyPlan(in, out), nil
	case TypeCardProvisioned:
		if in.Card == nil {
			return out, fmt.Errorf("%w: %s without card", ErrUnknownInput, in.Type)
		}
		return p.applyProvision(in, out), nil
	case TypeClockTicked:
		return p.applyTick(in.At, out), nil
	}
	return out, fmt.Errorf("%w: %q", ErrUnknownInput, in.Type)
}

func refused(in *Input, iccid, detail string) Emitted {
	return Emitted{Type: EmitInputRefused, ICCID: iccid, At: in.At, Cause: "event:" + in.ID, Detail: detail}
}

func (p *Partition) applyPlan(in *Input, out []Emitted) []Emitted {
	pc := *in.Plan
	if err := pc.Validate(); err != nil {
		return append(out, refused(in, "", "plan "+pc.PlanID+": "+err.Error()))
	}
	loc, _ := Zone(pc.TimeZone)
	anchor := pc.CycleAnchorDay
	if anchor == 0 {
		anchor = 1
	}
	p.plans[pc.PlanID] = &plan{PlanChanged: pc, loc: loc, anchor: anchor}
	return out
}

func (p *Partition) applyProvision(in *Input, out []Emitted) []Emitted {
	cp := in.Card
	pl, ok := p.plans[cp.PlanID]
	if !ok {
		return append(out, refused(in, cp.ICCID, "unknown plan "+strconv.Quote(cp.PlanID)))
	}
	c, exists := p.cards[cp.ICCID]
	if exists && c.account != cp.AccountID {
		return append(out, refused(in, cp.ICCID, "card belongs to account "+strconv.Quote(c.account)+"; moving a card between accounts is not supported"))
	}
	if !exists {
		now := max(p.now, in.At)
		c = &Card{iccid: cp.ICCID, account: cp.AccountID, seen: map[uint64]seenRecord{}}
		c.cycle = CycleAt(now, pl.loc, pl.anchor)
		p.cards[cp.ICCID] = c
		p.order = append(p.order, c)
	}
	c.planID, c.carrier, c.imsi, c.msisdn, c.pool = cp.PlanID, cp.Carrier, cp.IMSI, cp.MSISDN, cp.PoolID
	c.autoStop = cp.AutoStopOverQuota
	c.validFrom, c.validUntil = cp.ValidFrom, cp.ValidUntil
	out = append(out, c.emit(EmitProvisioned, in.At, "event:"+in.ID, pl))
	// Turning the option off lifts a standing over-quota stop; turning it
	// on stops a card already over quota.
	if !c.autoStop && c.reasons.Has(ReasonOverQuota) {
		out = c.clear(ReasonOverQuota, in.At, "event:"+in.ID, pl, out)
	}
	if c.autoStop && c.usage > pl.QuotaBytes && !c.reasons.Has(ReasonOverQuota) {
		c.overshoot = c.usage - pl.QuotaBytes
		out = c.raise(ReasonOverQuota, in.At, "event:"+in.ID, pl, out)
	}
	return out
}

// applyTick moves the log's time forward and rolls every card whose cycle
// has ended into the cycle holding the new time.
func (p *Partition) applyTick(at int64, out []Emitted) []Emitted {
	if at <= p.now {
		return out // ticks never move time back; a repeated tick is a no-op
	}
	p.now = at
	cause := "tick:" + strconv.FormatInt(at, 10)
	for _, c := range p.order {
		if c.cycle.End <= at {
			out = p.rollover(c, at, cause, out)
		}
	}
	return out
}

// rollover closes the card's cycle and opens the one holding t: usage
// resets, and the over-quota stop clears (自动超停 ends at cycle start).
func (p *Partition) rollover(c *Card, t int64, cause string, out []Emitted) []Emitted {
	pl := p.plans[c.planID]
	out = append(out, c.emit(EmitCycleClosed, t, cause, pl))
	c.cycle = CycleAt(t, pl.loc, pl.anchor)
	c.usage, c.overshoot = 0, 0
	if c.reasons.Has(ReasonOverQuota) {
		out = c.clear(ReasonOverQuota, t, cause, pl, out)
	}
	// forget record ids of cycles older than the retention horizon
	horizon := c.cycle.Start
	for i := 0; i < RetainedCycles; i++ {
		horizon = CycleAt(horizon-1, pl.loc, pl.anchor).Start
	}
	for k, s := range c.seen {
		if s.cycleStart < horizon {
			delete(c.seen, k)
		}
	}
	return out
}

func (c *Card) emit(t EmittedType, at int64, cause string, pl *plan) Emitted {
	e := Emitted{Type: t, ICCID: c.iccid, AccountID: c.account, At: at, Cause: cause,
		Reasons: c.reasons, Usage: c.usage, Overshoot: c.overshoot, Cycle: c.cycle}
	if pl != nil {
		e.Quota = pl.QuotaBytes
	}
	return e
}

func (c *Card) raise(r Reason, at int64, cause string, pl *plan, out []Emitted) []Emitted {
	c.reasons = c.reasons.With(r)
	e := c.emit(EmitStopped, at, cause, pl)
	e.Reason = r
	return append(out, e)
}

func (c *Card) clear(r Reason, at int64, cause string, pl *plan, out []Emitted) []Emitted {
	c.reasons = c.reasons.Without(r)
	t := EmitStopCleared
	if c.reasons == 0 {
		t = EmitResumed
	}
	e := c.emit(t, at, cause, pl)
	e.Reason = r
	return append(out, e)
}
