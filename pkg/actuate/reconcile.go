package actuate

import (
	"context"
	"fmt"
	"sort"
)

// CardmeterCard is a card as cardmeter has it.
type CardmeterCard struct {
	ICCID     string
	AccountID string
	Carrier   string
	Status    string // in_service, stopped, cancelled
	Reasons   []string
}

// Drift kinds: how a carrier's state differs from cardmeter's.
const (
	DriftActiveAtCarrier    = "active_at_carrier"    // stopped or cancelled in cardmeter, in service at the carrier
	DriftInactiveAtCarrier  = "inactive_at_carrier"  // in service in cardmeter, not at the carrier
	DriftMissingAtCarrier   = "missing_at_carrier"   // the carrier does not list it
	DriftUnknownToCardmeter = "unknown_to_cardmeter" // the carrier lists a card cardmeter does not have for it
)

// Drift is a reconciliation's finding: the cards by kind, and what was
// sent to mend them.
type Drift struct {
	Carrier  string              `json:"carrier"`
	Compared int                 `json:"compared"` // cards of this carrier in cardmeter
	Cards    map[string][]string `json:"cards"`    // by kind
	Sent     int                 `json:"sent"`     // resyncs asked (with a mend)
	Failed   []string            `json:"failed,omitempty"`
	// Unsent are drifted cards whose action the carrier's driver has no
	// call for: no resync would reach the carrier.
	Unsent []string `json:"unsent,omitempty"`
}

// Caller is a driver that says which action kinds it can send.
type Caller interface{ Can(kind string) bool }

// DriftKinds are the kinds of drift, in the order they are reported.
var DriftKinds = []string{DriftActiveAtCarrier, DriftInactiveAtCarrier, DriftMissingAtCarrier, DriftUnknownToCardmeter}

// Counts are the drifted cards by kind, every kind named (0 when none).
func (d *Drift) Counts() map[string]int {
	out := map[string]int{}
	for _, k := range DriftKinds {
		out[k] = len(d.Cards[k])
	}
	return out
}

// Mend asks that a drifted card's state be sent to its carrier again
// (kind says how it drifted). It goes through the log, not to the carrier
// directly: the fold emits card.resync_requested.v1 at its place in the
// card's history and the actuator sends it in order with the card's other
// actions, so a mend listed before a resume cannot undo the resume.
type Mend func(ctx context.Context, c CardmeterCard, kind string) error

// Reconcile compares a carrier's cards (from its driver) with
// cardmeter's (from list, every card cardmeter has, paged) and, with a
// mend, asks for each card in service at one and not the other to be sent
// again. A card missing at the carrier (but for a cancelled one: a carrier
// forgets those), or listed there but unknown to cardmeter, is reported
// and left alone.
func Reconcile(ctx context.Context, carrier string, drv Driver, list func(ctx context.Context, cursor string) ([]CardmeterCard, string, error), mend Mend) (*Drift, error) {
	sr, ok := drv.(StateReader)
	if !ok {
		return nil, fmt.Errorf("carrier %s: %w", carrier, ErrNoState)
	}
	atCarrier := map[string]bool{}
	for cursor := ""; ; {
		page, next, err := sr.States(ctx, cursor)
		if err != nil {
			return nil, fmt.Errorf("listing the carrier's cards: %w", err)
		}
		for _, c := range page {
			atCarrier[c.ICCID] = c.Active
		}
		if next == "" || next == cursor {
			break
		}
		cursor = next
	}
	d := &Drift{Carrier: carrier, Cards: map[string][]string{}}
	var mends []drifted
	seen := map[string]bool{}
	for cursor := ""; ; {
		page, next, err := list(ctx, cursor)
		if err != nil {
			return nil, fmt.Errorf("listing cardmeter's cards: %w", err)
		}
		for _, c := range page {
			if c.Carrier != carrier {
				continue
			}
			seen[c.ICCID] = true
			d.Compared++
			active, listed := atCarrier[c.ICCID]
			var kind string
			switch {
			case !listed && c.Status != "cancelled":
				d.Cards[DriftMissingAtCarrier] = append(d.Cards[DriftMissingAtCarrier], c.ICCID)
				continue
			case !listed:
				continue // cancelled here, forgotten there: they agree
			case active && c.Status != "in_service":
				kind = DriftActiveAtCarrier
			case !active && c.Status == "in_service":
				kind = DriftInactiveAtCarrier
			default:
				continue
			}
			d.Cards[kind] = append(d.Cards[kind], c.ICCID)
			mends = append(mends, drifted{c, kind})
		}
		if next == "" || next == cursor {
			break
		}
		cursor = next
	}
	for iccid := range atCarrier {
		if !seen[iccid] {
			d.Cards[DriftUnknownToCardmeter] = append(d.Cards[DriftUnknownToCardmeter], iccid)
		}
	}
	for _, v := range d.Cards {
		sort.Strings(v)
	}
	if mend == nil {
		return d, nil
	}
	for _, m := range mends {
		if ctx.Err() != nil {
			return d, ctx.Err()
		}
		if c, ok := drv.(Caller); ok && !c.Can(m.action()) {
			d.Unsent = append(d.Unsent, m.card.ICCID)
			continue
		}
		if err := mend(ctx, m.card, m.kind); err != nil {
			d.Failed = append(d.Failed, fmt.Sprintf("%s (%s): %v", m.card.ICCID, m.kind, err))
			continue
		}
		d.Sent++
	}
	return d, nil
}

// drifted is a card a resync may mend.
type drifted struct {
	card CardmeterCard
	kind string
}

// action is what the card's state needs at its carrier.
func (m drifted) action() string {
	switch {
	case m.kind == DriftInactiveAtCarrier:
		return "resume"
	case m.card.Status == "cancelled":
		return "cancel"
	}
	return "stop"
}

// Unmendable is the drift a resync cannot mend: cards missing at the
// carrier, cards it lists that cardmeter does not have, and cards whose
// action its driver has no call for.
func (d *Drift) Unmendable() int {
	return len(d.Cards[DriftMissingAtCarrier]) + len(d.Cards[DriftUnknownToCardmeter]) + len(d.Unsent)
}

// Total is every drifted card.
func (d *Drift) Total() int {
	n := 0
	for _, v := range d.Cards {
		n += len(v)
	}
	return n
}
