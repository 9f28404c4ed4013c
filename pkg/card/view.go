package card

import "sort"

// Status is a card's service state.
type Status string

const (
	InService Status = "in_service"
	Stopped   Status = "stopped"
	Cancelled Status = "cancelled"
)

func (c *Card) status() Status {
	switch {
	case c.cancelled:
		return Cancelled
	case c.reasons != 0:
		return Stopped
	}
	return InService
}

// View is a read-only copy of a card's state, as the API shows it.
type View struct {
	ICCID             string
	AccountID         string
	PlanID            string
	PoolID            string
	Carrier           string
	Status            Status
	Reasons           Reasons
	Cycle             Cycle
	UsageBytes        uint64
	QuotaBytes        uint64
	OvershootBytes    uint64 // usage past the quota this cycle
	AutoStopOverQuota bool
	ValidFrom         int64
	ValidUntil        int64
	ExpiredAt         int64
	Warnings          []string
	LastCommand       CommandOutcome
	Account           AccountView
}

// Card returns a view of a card, or false when the partition has none.
func (p *Partition) Card(iccid string) (View, bool) {
	c, ok := p.cards[iccid]
	if !ok {
		return View{}, false
	}
	pl := p.plans[c.planID]
	v := View{
		ICCID: c.iccid, AccountID: c.account, PlanID: c.planID, PoolID: c.poolID, Carrier: c.carrier,
		Status: c.status(), Reasons: c.reasons, Cycle: c.cycle, UsageBytes: c.usage, QuotaBytes: pl.QuotaBytes,
		AutoStopOverQuota: c.autoStop, ValidFrom: c.validFrom, ValidUntil: c.validUntil, ExpiredAt: c.expiredAt,
		Warnings: c.warned.names(pl), LastCommand: c.lastCmd,
	}
	if v.UsageBytes > v.QuotaBytes {
		v.OvershootBytes = v.UsageBytes - v.QuotaBytes
	}
	v.Account, _ = p.Account(c.account)
	return v, true
}

// Filter selects cards for ListCards; empty fields match everything.
type Filter struct {
	Status    Status
	Reason    Reason
	AccountID string
}

// ListCards returns up to limit ICCIDs after the cursor, in ICCID order,
// of the cards that match f. (An ICCID order across partitions lets the
// API merge pages.)
func (p *Partition) ListCards(f Filter, after string, limit int) []View {
	var out []View
	for _, c := range p.order {
		if c.iccid <= after || (f.AccountID != "" && c.account != f.AccountID) ||
			(f.Status != "" && c.status() != f.Status) || (f.Reason != 0 && !c.reasons.Has(f.Reason)) {
			continue
		}
		v, _ := p.Card(c.iccid)
		v.Account = AccountView{}
		out = append(out, v)
	}
	sortViews(out)
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

func sortViews(v []View) { sort.Slice(v, func(i, j int) bool { return v[i].ICCID < v[j].ICCID }) }
