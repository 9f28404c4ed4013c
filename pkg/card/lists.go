package card

import (
	"math/bits"

	"github.com/google/btree"
)

// The list indexes keep, in ICCID order, the cards of each sparse filter:
// a stop reason's cards (bits 0-7, by the reason's bit), the stopped ones,
// the cancelled ones. A page of such a filter then reads its own cards
// from the cursor on, not every card of the partition until it finds
// enough: a list of the 200 cancelled cards among a million reads 200.
// The fold keeps them from what it emits (every raise, clear and
// cancellation emits), so they cost a tree update per stop, nothing per
// record.
const (
	listStopped   = 8
	listCancelled = 9
	listCount     = 10
)

func iccidLess(a, b *Card) bool { return a.iccid < b.iccid }

// listsWanted are the list indexes the card belongs in.
func (c *Card) listsWanted() uint16 {
	want := uint16(c.reasons)
	switch {
	case c.cancelled:
		want |= 1 << listCancelled
	case c.reasons != 0:
		want |= 1 << listStopped
	}
	return want
}

// relist moves the card into the list indexes it belongs in now.
func (p *Partition) relist(c *Card) {
	want := c.listsWanted()
	for changed := want ^ c.lists; changed != 0; changed &= changed - 1 {
		b := bits.TrailingZeros16(changed)
		if want&(1<<b) != 0 {
			if p.lists[b] == nil {
				p.lists[b] = btree.NewG(32, iccidLess)
			}
			p.lists[b].ReplaceOrInsert(c)
		} else {
			p.lists[b].Delete(c)
		}
	}
	c.lists = want
}

// relistEmitted relists the cards whose stops the events changed.
func (p *Partition) relistEmitted(out []Emitted) {
	for i := range out {
		switch out[i].Type {
		case EmitStopped, EmitStopCleared, EmitResumed, EmitCancelled:
			if c := p.cards[out[i].ICCID]; c != nil {
				p.relist(c)
			}
		}
	}
}

// listIndex is the list index that serves f, if one does: f is sparse
// (a reason, stopped or cancelled) and not one account's (an account's
// page reads its own cards).
func (p *Partition) listIndex(f Filter) (*btree.BTreeG[*Card], bool) {
	if f.AccountID != "" {
		return nil, false
	}
	switch {
	case f.Reason != 0:
		return p.lists[bits.TrailingZeros8(uint8(f.Reason))], true
	case f.Status == Stopped:
		return p.lists[listStopped], true
	case f.Status == Cancelled:
		return p.lists[listCancelled], true
	}
	return nil, false
}
