package card

import "github.com/cardmeter/cardmeter/pkg/cdr"

// Verdict is what the fold made of one usage record.
type Verdict struct {
	Status     UsageStatus
	CycleStart int64  // the cycle the record counts in (Accepted, Late)
	AccountID  string // the card's account and plan, for analytics rows
	PlanID     string
}

// UsageStatus classifies a record.
type UsageStatus uint8

const (
	// Accepted: counted in the card's current cycle.
	Accepted UsageStatus = iota + 1
	// Late: counted in a closed cycle (an adjustment); it stops nothing now.
	Late
	// Duplicate: the record id was counted before, with the same content.
	Duplicate
	// Conflict: the record id was counted before with different content;
	// the first counts, this one does not, and a conflict event is emitted.
	Conflict
	// UnknownCard: no card with the record's ICCID in this partition.
	UnknownCard
	// TooLate: the record is older than the cycles whose ids are retained.
	TooLate
	// CardCancelled: the card is cancelled; nothing counts for it any more.
	CardCancelled
)

// Counts reports whether the record's bytes count as usage.
func (s UsageStatus) Counts() bool { return s == Accepted || s == Late }

func (s UsageStatus) String() string {
	switch s {
	case Accepted:
		return "accepted"
	case Late:
		return "late"
	case Duplicate:
		return "duplicate"
	case Conflict:
		return "conflict"
	case UnknownCard:
		return "unknown_card"
	case TooLate:
		return "too_late"
	case CardCancelled:
		return "card_cancelled"
	}
	return "unknown"
}

// MB is the unit of the overage price: 1 MB = 2^20 bytes, each MB begun
// charged in full.
const MB = 1 << 20

// ApplyUsage folds a chunk of usage records in order. It appends one verdict
// per record to verdicts[:0] and what the records cause to out. Records of a
// chunk carry ICCIDs (the ingest resolves IMSI and MSISDN).
//
// pr is what Probe made of the same chunk, with the exact index's answers
// for the records it named filled in by the shell, which reads them off
// the heap before the fold: the fold does no I/O and cannot fail. nil
// means no index: the state holds every id it remembers.
func (p *Partition) ApplyUsage(h *cdr.ChunkHeader, recs []cdr.Record, pr *Probe, verdicts []Verdict, out []Emitted) ([]Verdict, []Emitted) {
	n := len(out)
	verdicts, out = p.applyUsage(h, recs, pr, verdicts, out)
	p.relistEmitted(out[n:])
	return verdicts, out
}

func (p *Partition) applyUsage(h *cdr.ChunkHeader, recs []cdr.Record, pr *Probe, verdicts []Verdict, out []Emitted) ([]Verdict, []Emitted) {
	verdicts = verdicts[:0]
	if pr != nil && len(pr.cards) != len(recs) {
		// a probe of another chunk: folding without it would count again
		// every id remembered before the last checkpoint
		panic("card: ApplyUsage with a probe of another chunk")
	}
	for i := range recs {
		var v Verdict
		if pr != nil {
			v, out = p.applyRecord(h, &recs[i], pr.cards[i], pr.keys[i], pr.Found[i], out)
		} else {
			c, _ := p.card(recs[i].ICCID)
			v, out = p.applyRecord(h, &recs[i], c, cdr.IDHash(h.Carrier, recs[i].RecordID), Lookup{}, out)
		}
		verdicts = append(verdicts, v)
	}
	return verdicts, out
}

// remembered is what the card remembers of record id key, if anything:
// what it counted since the last checkpoint, else what the index found,
// unless that belongs to a cycle the card has forgotten.
func (c *Card) remembered(key uint64, lk Lookup) (seenRecord, bool) {
	if s, ok := c.recent.get(key); ok {
		return s, true
	}
	if lk.Found && seenRecord(lk.Seen).cycleStart() >= c.keepFrom {
		return seenRecord(lk.Seen), true
	}
	return 0, false
}

// remember files a counted record id under the cycle it counted in.
func (c *Card) remember(key uint64, s seenRecord, pl *plan) {
	c.recent.put(key, s)
	c.fps[c.slotOf(s.cycleStart(), pl)].add(key)
	c.dirty = true
}

// slotOf is the filter slot of the cycle that starts at start: 0 for the
// current cycle, i for the i-th cycle before it, as the horizon counts
// them (a rollover shifts every slot by one and drops the last).
func (c *Card) slotOf(start int64, pl *plan) int {
	h := c.cycle.Start
	for i := 0; i < RetainedCycles; i++ {
		if start >= h {
			return i
		}
		h = CycleAt(h-1, pl.loc, pl.anchor).Start
	}
	return RetainedCycles
}

// applyRecord applies DOMAIN.md "Usage records": a record counts in the
// cycle its session started in, once per carrier and record id; interim
// records of a long session each count.
func (p *Partition) applyRecord(h *cdr.ChunkHeader, r *cdr.Record, c *Card, key uint64, lk Lookup, out []Emitted) (Verdict, []Emitted) {
	if c == nil {
		return Verdict{Status: UnknownCard}, out
	}
	pl := p.plans[c.planID]
	v := Verdict{AccountID: c.account, PlanID: c.planID}
	if c.cancelled {
		v.Status = CardCancelled
		return v, out
	}
	content := r.ContentHash()
	if s, dup := c.remembered(key, lk); dup {
		if s.sameContent(content) {
			v.Status = Duplicate
			return v, out
		}
		v.Status = Conflict
		e := c.emit(EmitUsageConflict, h.ReceivedAt, cause(h, r), pl)
		e.Bytes = r.Bytes()
		return v, append(out, e)
	}
	cyc := c.cycle
	if !cyc.Contains(r.Start) {
		cyc = CycleAt(r.Start, pl.loc, pl.anchor)
	}
	if cyc.Start > c.cycle.Start {
		// A session in a later cycle than the card's: the record shows that
		// time has passed the cycle's end before a tick said so.
		out = p.advance(c, r.Start, cause(h, r), out)
		if c.cancelled {
			v.Status = CardCancelled
			return v, out
		}
	}
	if cyc.Start < c.cycle.Start {
		return p.applyLate(c, pl, h, r, key, content, cyc, v, out)
	}
	c.remember(key, packSeen(content, c.cycle.Start), pl)
	v.Status, v.CycleStart = Accepted, c.cycle.Start
	c.usage += r.Bytes()
	at := max(h.ReceivedAt, p.now)
	if po := p.pools[c.poolID]; po != nil {
		out = p.poolUsage(po, r, at, cause(h, r), out)
	} else if c.autoStop && c.usage > pl.QuotaBytes && !c.reasons.Has(ReasonOverQuota) {
		c.overshoot = c.usage - pl.QuotaBytes
		out = c.raise(ReasonOverQuota, at, cause(h, r), pl, out)
	}
	if !c.autoStop && c.poolID == "" {
		out = p.chargeOverage(c, pl, c.usage, &c.charged, "overage", at, h, r, out)
	}
	if r.IMEI != "" {
		out = p.checkDevice(c, pl, r.IMEI, at, h, r, false, out)
	}
	out = p.checkAnomaly(c, pl, at, h, r, out)
	return v, c.usageWarnings(at, h, r, pl, out)
}

// applyLate counts a record of a closed cycle there: an adjustment event,
// an overage charge for that cycle if one is due, and no stop now.
func (p *Partition) applyLate(c *Card, pl *plan, h *cdr.ChunkHeader, r *cdr.Record, key, content uint64, cyc Cycle, v Verdict, out []Emitted) (Verdict, []Emitted) {
	if cyc.Start < p.horizon(c, pl) {
		v.Status = TooLate
		return v, out
	}
	c.remember(key, packSeen(content, cyc.Start), pl)
	v.Status, v.CycleStart = Late, cyc.Start
	if r.IMEI != "" {
		out = p.checkDevice(c, pl, r.IMEI, max(h.ReceivedAt, p.now), h, r, true, out)
	}
	out = p.checkAnomaly(c, pl, max(h.ReceivedAt, p.now), h, r, out)
	e := c.emit(EmitUsageAdjusted, h.ReceivedAt, cause(h, r), pl)
	e.Cycle, e.Bytes = cyc, r.Bytes()
	out = append(out, e)
	for i := range c.closed {
		cl := &c.closed[i]
		if cl.start == cyc.Start {
			cl.usage += r.Bytes()
			if !c.autoStop && c.poolID == "" {
				out = p.chargeOverage(c, pl, cl.usage, &cl.charged, "overage_adjustment", max(h.ReceivedAt, p.now), h, r, out)
			}
		}
	}
	return v, out
}

// chargeOverage rates usage past the quota at the plan's overage price,
// per MB begun, charging what was not charged before (DOMAIN.md §2: a card
// without the option keeps working and the extra usage is charged). The
// cause names record r of chunk h; it is built only when a charge is due,
// as this runs for every record.
func (p *Partition) chargeOverage(c *Card, pl *plan, usage uint64, charged *uint64, reason string, at int64, h *cdr.ChunkHeader, r *cdr.Record, out []Emitted) []Emitted {
	if pl.OverageFenPerMB == 0 || usage <= pl.QuotaBytes {
		return out
	}
	mb := (usage - pl.QuotaBytes + MB - 1) / MB
	if mb <= *charged {
		return out
	}
	amount := int64(mb-*charged) * pl.OverageFenPerMB
	*charged = mb
	return p.charge(p.accounts[c.account], c, amount, reason, at, cause(h, r), out)
}

// poolUsage adds a record to its card's pool and applies the pool rule.
func (p *Partition) poolUsage(po *pool, r *cdr.Record, at int64, cause string, out []Emitted) []Emitted {
	if r.Start >= po.cycle.End {
		out = p.rollPool(po, r.Start, cause, out)
	}
	if !po.cycle.Contains(r.Start) {
		return out // a record of a closed pool cycle stops nothing now
	}
	po.usage += r.Bytes()
	po.dirty = true
	return p.poolRule(po, at, cause, out)
}

func cause(h *cdr.ChunkHeader, r *cdr.Record) string {
	return "record:" + h.Carrier + "/" + r.RecordID
}
