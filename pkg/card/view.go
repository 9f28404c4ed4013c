package card

// Status is a card's service state.
type Status string

const (
	InService Status = "in_service"
	Stopped   Status = "stopped"
	Cancelled Status = "cancelled"
)

// View is a read-only copy of a card's state, as the API shows it.
type View struct {
	ICCID             string
	AccountID         string
	PlanID            string
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
}

// Card returns a view of a card, or false when the partition has none.
func (p *Partition) Card(iccid string) (View, bool) {
	c, ok := p.cards[iccid]
	if !ok {
		return View{}, false
	}
	v := View{
		ICCID: c.iccid, AccountID: c.account, PlanID: c.planID, Carrier: c.carrier,
		Status: InService, Reasons: c.reasons, Cycle: c.cycle, UsageBytes: c.usage,
		AutoStopOverQuota: c.autoStop,
		ValidFrom:         c.validFrom, ValidUntil: c.validUntil,
	}
	if c.reasons != 0 {
		v.Status = Stopped
	}
	if pl := p.plans[c.planID]; pl != nil {
		v.QuotaBytes = pl.QuotaBytes
	}
	if v.UsageBytes > v.QuotaBytes {
		v.OvershootBytes = v.UsageBytes - v.QuotaBytes
	}
	return v, true
}
