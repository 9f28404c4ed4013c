package card

import (
	"container/heap"
	"math"
	"slices"
)

// never is the deadline of a card no tick changes any more.
const never = math.MaxInt64

// deadline is the earliest time at which advancing the card changes it: its
// cycle's end, its validity's end and the expiry warnings before it, or its
// cancellation after expiry. advance(c, t) for t before it does nothing.
func (p *Partition) deadline(c *Card) int64 {
	if c.cancelled {
		return never
	}
	d := c.cycle.End
	if d == 0 {
		d = never
	}
	if c.validUntil == 0 {
		return d
	}
	if c.expiredAt != 0 {
		if pl := p.plans[c.planID]; pl != nil {
			d = min(d, c.cancelAt(pl))
		}
		return d
	}
	d = min(d, c.validUntil)
	for i, days := range ExpiryWarningDays {
		if !c.warned.has(bitExpiry + i) {
			d = min(d, c.validUntil-days*86400)
		}
	}
	return d
}

// reschedule files the card under its deadline again after a change.
func (p *Partition) reschedule(c *Card) {
	if d := p.deadline(c); d != c.due {
		c.due = d
		heap.Fix(&p.due, int(c.hidx))
	}
}

// deadlines is a min-heap of cards by deadline. Its order among equal
// deadlines depends on its history; popDue sorts what it takes, so the
// fold does not.
type deadlines []*Card

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].due < h[j].due }
func (h deadlines) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = int32(i), int32(j)
}
func (h *deadlines) Push(x any) {
	c := x.(*Card)
	c.hidx = int32(len(*h))
	*h = append(*h, c)
}
func (h *deadlines) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

func (h *deadlines) push(c *Card) { heap.Push(h, c) }

// popDue returns the cards whose deadline is at or before t, in
// provisioning order, and files them as never due: advancing a card
// reschedules it.
func (h *deadlines) popDue(t int64) []*Card {
	var due []*Card
	for len(*h) > 0 && (*h)[0].due <= t {
		c := (*h)[0]
		c.due = never
		heap.Fix(h, 0)
		due = append(due, c)
	}
	slices.SortFunc(due, func(a, b *Card) int { return int(a.ord) - int(b.ord) })
	return due
}
