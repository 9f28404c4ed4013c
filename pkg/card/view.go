package card

import (
	"slices"
	"strings"
)

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
	CancelAt          int64  // an expired card's cancellation unless renewed first; 0 otherwise
	IMEI, LastIMEI    string // the bound device and the last one seen (14 digits; "" for none)
	BindFirstSeen     bool   // binds to the first device seen (the card's or its plan's option)
	StopOnIMEIChange  bool   // a new device stops it (the card's or its plan's option)
	TimeZone          string // the plan's: its cycles' days and months are of this zone
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
	v := p.view(c)
	v.Account, _ = p.Account(c.account)
	return v, true
}

// view is a card's view without its account's.
func (p *Partition) view(c *Card) View {
	pl := p.plans[c.planID]
	v := View{
		ICCID: c.iccid, AccountID: c.account, PlanID: c.planID, PoolID: c.poolID, Carrier: c.carrier,
		Status: c.status(), Reasons: c.reasons, Cycle: c.cycle, UsageBytes: c.usage, QuotaBytes: pl.QuotaBytes,
		AutoStopOverQuota: c.autoStop, ValidFrom: c.validFrom, ValidUntil: c.validUntil, ExpiredAt: c.expiredAt,
		TimeZone: pl.loc.String(), Warnings: c.warned.names(pl), LastCommand: c.lastCommand(),
	}
	v.IMEI, v.LastIMEI = c.imeiBound.String(), c.imeiLast.String()
	v.BindFirstSeen, v.StopOnIMEIChange = c.binding(pl)
	if c.expiredAt != 0 && !c.cancelled && c.validUntil != 0 {
		v.CancelAt = c.cancelAt(pl)
	}
	if v.UsageBytes > v.QuotaBytes {
		v.OvershootBytes = v.UsageBytes - v.QuotaBytes
	}
	return v
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
//
// A page reads from its cursor on in the cards' ICCID order, up to limit
// matches: an unfiltered page reads limit cards; a page of a stop reason,
// of the stopped or of the cancelled cards reads those only, from their
// list index (lists.go); an account's page reads that account's cards
// only; an in-service page as many as it takes to find limit matches (in
// service is most cards).
func (p *Partition) ListCards(f Filter, after string, limit int) []View {
	if limit <= 0 {
		return nil
	}
	match := func(c *Card) bool {
		return (f.AccountID == "" || c.account == f.AccountID) && (f.Status == "" || c.status() == f.Status) && (f.Reason == 0 || c.reasons.Has(f.Reason))
	}
	if tree, ok := p.listIndex(f); ok {
		var out []View
		if tree == nil {
			return nil // no card was ever in it
		}
		tree.AscendGreaterOrEqual(&Card{iccid: after}, func(c *Card) bool {
			if c.iccid != after && match(c) {
				out = append(out, p.view(c))
			}
			return len(out) < limit
		})
		return out
	}
	p.listed, p.listedN = mergeSorted(p.listed, p.listedN)
	from := p.listed
	if f.AccountID != "" {
		a, ok := p.accounts[f.AccountID]
		if !ok {
			return nil
		}
		from = a.sortedCards()
	}
	i, found := slices.BinarySearchFunc(from, after, byICCID)
	if found {
		i++
	}
	var out []View
	for ; i < len(from) && len(out) < limit; i++ {
		c := from[i]
		if !match(c) {
			continue
		}
		out = append(out, p.view(c))
	}
	return out
}

func byICCID(c *Card, iccid string) int { return strings.Compare(c.iccid, iccid) }

func iccidOrder(a, b *Card) int { return strings.Compare(a.iccid, b.iccid) }

// mergeSorted returns cards in ICCID order, given that its first n are:
// the rest are sorted and merged in (a linear pass; cards filed one by one
// between two lists cost that, not a sort of them all).
func mergeSorted(cards []*Card, n int) ([]*Card, int) {
	if n == len(cards) {
		return cards, n
	}
	tail := cards[n:]
	slices.SortFunc(tail, iccidOrder)
	if n == 0 || iccidOrder(cards[n-1], tail[0]) < 0 {
		return cards, len(cards) // the new ones all come after
	}
	out := make([]*Card, 0, len(cards))
	a, b := cards[:n], tail
	for len(a) > 0 && len(b) > 0 {
		if iccidOrder(a[0], b[0]) <= 0 {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	out = append(append(out, a...), b...)
	return out, len(out)
}

// PlanOf is a card's plan, or false when the partition has no such card.
// Unlike Card it reads nothing of the card's account.
func (p *Partition) PlanOf(iccid string) (string, bool) {
	c, ok := p.cards[iccid]
	if !ok {
		return "", false
	}
	return c.planID, true
}
