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
	}
	return "unknown"
}

// ApplyUsage folds a chunk of usage records in order. It appends one verdict
// per record to verdicts[:0] and what the records cause to out. Records of a
// chunk carry ICCIDs (the ingest resolves IMSI and MSISDN).
func (p *Partition) ApplyUsage(h *cdr.ChunkHeader, recs []cdr.Record, verdicts []Verdict, out []Emitted) ([]Verdict, []Emitted) {
	verdicts = verdicts[:0]
	for i := range recs {
		var v Verdict
		v, out = p.applyRecord(h, &recs[i], out)
		verdicts = append(verdicts, v)
	}
	return verdicts, out
}

func (p *Partition) applyRecord(h *cdr.ChunkHeader, r *cdr.Record, out []Emitted) (Verdict, []Emitted) {
	c, ok := p.cards[r.ICCID]
	if !ok {
		return Verdict{Status: UnknownCard}, out
	}
	pl := p.plans[c.planID]
	v := Verdict{AccountID: c.account, PlanID: c.planID}
	key := cdr.IDHash(h.Carrier, r.RecordID)
	content := r.ContentHash()
	if s, dup := c.seen[key]; dup {
		if s.content == content {
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
		out = p.rollover(c, r.Start, cause(h, r), out)
	}
	if cyc.Start < c.cycle.Start {
		horizon := c.cycle.Start
		for i := 0; i < RetainedCycles; i++ {
			horizon = CycleAt(horizon-1, pl.loc, pl.anchor).Start
		}
		if cyc.Start < horizon {
			v.Status = TooLate
			return v, out
		}
		c.seen[key] = seenRecord{content: content, cycleStart: cyc.Start}
		v.Status, v.CycleStart = Late, cyc.Start
		e := c.emit(EmitUsageAdjusted, h.ReceivedAt, cause(h, r), pl)
		e.Cycle, e.Bytes = cyc, r.Bytes()
		return v, append(out, e)
	}
	c.seen[key] = seenRecord{content: content, cycleStart: c.cycle.Start}
	v.Status, v.CycleStart = Accepted, c.cycle.Start
	c.usage += r.Bytes()
	if c.autoStop && c.usage > pl.QuotaBytes && !c.reasons.Has(ReasonOverQuota) {
		c.overshoot = c.usage - pl.QuotaBytes
		out = c.raise(ReasonOverQuota, h.ReceivedAt, cause(h, r), pl, out)
	}
	return v, out
}

func cause(h *cdr.ChunkHeader, r *cdr.Record) string {
	return "record:" + h.Carrier + "/" + r.RecordID
}
