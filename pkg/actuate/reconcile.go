package actuate

import (
	"context"
	"fmt"
	"sort"
	"time"
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
	Sent     int                 `json:"sent"`     // actions sent again (with fix)
	Failed   []string            `json:"failed,omitempty"`
}

// Counts are the drifted cards by kind.
func (d *Drift) Counts() map[string]int {
	out := map[string]int{}
	for k, v := range d.Cards {
		out[k] = len(v)
	}
	return out
}

// Reconcile compares a carrier's cards (from its driver) with
// cardmeter's (from list, every card cardmeter has, paged) and, with fix,
// sends each drifted card the action that makes the carrier agree with
// cardmeter: stop (or cancel) for one in service there but not here,
// resume for one stopped there but in service here. A card missing at the
// carrier, or unknown to cardmeter, is reported and left alone.
func Reconcile(ctx context.Context, carrier string, drv Driver, list func(ctx context.Context, cursor string) ([]CardmeterCard, string, error), fix bool, now time.Time) (*Drift, error) {
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
	var mend []Action
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
			a := Action{ICCID: c.ICCID, AccountID: c.AccountID, Reasons: c.Reasons,
				EventID: fmt.Sprintf("reconcile-%s-%s", now.UTC().Format("20060102T150405"), c.ICCID)}
			switch {
			case !listed:
				d.Cards[DriftMissingAtCarrier] = append(d.Cards[DriftMissingAtCarrier], c.ICCID)
				continue
			case active && c.Status == "stopped":
				a.Kind = "stop"
			case active && c.Status == "cancelled":
				a.Kind = "cancel"
			case !active && c.Status == "in_service":
				a.Kind = "resume"
			default:
				continue
			}
			kind := DriftActiveAtCarrier
			if a.Kind == "resume" {
				kind = DriftInactiveAtCarrier
			}
			d.Cards[kind] = append(d.Cards[kind], c.ICCID)
			mend = append(mend, a)
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
	if !fix {
		return d, nil
	}
	for _, a := range mend {
		if ctx.Err() != nil {
			return d, ctx.Err()
		}
		if _, err := drv.Do(ctx, a); err != nil {
			d.Failed = append(d.Failed, fmt.Sprintf("%s %s: %v", a.Kind, a.ICCID, err))
			continue
		}
		d.Sent++
	}
	return d, nil
}
