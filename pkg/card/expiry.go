package card

import "time"

// CancelAfterMonths is how long after expiry an unrenewed card is cancelled
// (DOMAIN.md §4: three months, then 自动注销).
const CancelAfterMonths = 3

// cancelAt is when an expired card is cancelled.
func (c *Card) cancelAt(pl *plan) int64 {
	return time.Unix(c.validUntil, 0).In(pl.loc).AddDate(0, CancelAfterMonths, 0).Unix()
}

// checkValidity applies DOMAIN.md §4 up to time t: at the validity end the
// card stops for expiry; three months later it is cancelled, finally. Each
// happens at its own time, which the emitted event carries.
func (p *Partition) checkValidity(c *Card, t int64, cause string, out []Emitted) []Emitted {
	if c.cancelled || c.validUntil == 0 {
		return out
	}
	pl := p.plans[c.planID]
	if c.expiredAt == 0 && c.validUntil <= t {
		c.expiredAt, c.dirty = c.validUntil, true
		out = c.raise(ReasonExpiry, c.validUntil, cause, pl, out)
	}
	if c.expiredAt != 0 {
		if at := c.cancelAt(pl); at <= t {
			out = p.cancel(c, at, cause, out)
		}
	}
	return out
}

// cancel ends the card for good: every later event for it is refused or
// ignored with a reason. Its warnings resolve.
func (p *Partition) cancel(c *Card, at int64, cause string, out []Emitted) []Emitted {
	pl := p.plans[c.planID]
	c.cancelled, c.dirty = true, true
	out = p.resolveAll(c, at, cause, pl, out)
	return append(out, c.emit(EmitCancelled, at, cause, pl))
}

// applyRenewal extends the validity (续费). Within three months of expiry
// it resumes an expired card; a cancelled card cannot be renewed.
func (p *Partition) applyRenewal(in *Input, out []Emitted) []Emitted {
	r := in.Renewal
	c := p.cards[r.ICCID]
	if c == nil {
		return append(out, refused(in, r.ICCID, RefusedUnknownCard, "unknown card"))
	}
	now := p.at(in)
	cause := "event:" + in.ID
	pl := p.plans[c.planID]
	defer p.reschedule(c)
	// time may have passed deadlines the last tick did not reach
	out = p.checkValidity(c, now, cause, out)
	if c.cancelled {
		return append(out, refused(in, r.ICCID, RefusedCancelled, "card is cancelled: a cancelled card cannot be renewed"))
	}
	until := r.ValidUntil
	if r.Months > 0 {
		from := max(c.validUntil, now)
		until = time.Unix(from, 0).In(pl.loc).AddDate(0, r.Months, 0).Unix()
	}
	if until <= now {
		return append(out, refused(in, r.ICCID, RefusedInvalid, "the renewal ends in the past"))
	}
	c.validUntil = until
	c.dirty = true
	e := c.emit(EmitRenewed, now, cause, pl)
	out = append(out, e)
	if c.expiredAt != 0 {
		c.expiredAt, c.dirty = 0, true
		out = c.clear(ReasonExpiry, now, cause, pl, out)
	}
	out = p.resolveExpiryWarnings(c, now, cause, pl, out)
	return p.expiryWarnings(c, now, cause, out)
}
