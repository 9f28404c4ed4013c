package card

import (
	"cmp"
	"math"
	"slices"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// The record-id index: a card remembers the ids it counted for its current
// and RetainedCycles closed cycles (DOMAIN.md: a record id counts once,
// however late). Only the filters (fpSlot, 2 bytes an id) and the ids
// counted since the last checkpoint (Card.recent) are in this state; the
// exact ids live off the heap in an index the shell keeps (pkg/index). The
// fold stays pure: before folding a chunk, the shell asks Probe which
// records the filters cannot rule out, looks those up, and passes the
// answers to ApplyUsage. At a checkpoint the shell takes the new ids with
// TakeIDs and adds them to the index.

// Lookup is the exact index's answer for one record: the entry of its card
// and record id, if any.
type Lookup struct {
	Seen  uint64 // the entry's packed content hash and cycle
	Found bool
}

// IndexEntry is one remembered record id as the index stores it.
type IndexEntry struct {
	Card uint64 // the card's key in the index: its provisioning order in the partition
	ID   uint64 // cdr.IDHash of carrier and record id
	Seen uint64 // content hash and cycle, packed
}

// CycleStart is the start of the cycle the entry's record counted in.
func (e IndexEntry) CycleStart() int64 { return SeenCycleStart(e.Seen) }

// SeenCycleStart is the cycle start packed in an entry's Seen.
func SeenCycleStart(seen uint64) int64 { return seenRecord(seen).cycleStart() }

// CompareEntries orders entries by card, then id: the index's order.
func CompareEntries(a, b IndexEntry) int {
	if c := cmp.Compare(a.Card, b.Card); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// Need is a record of a chunk whose id the card's filters cannot rule out:
// the shell looks its card and id up in the index, among the entries of
// cycles that start in [From, To] (the cycles the card still remembers).
type Need struct {
	Rec      int // its position in the chunk
	Card, ID uint64
	From, To int64
}

// Probe is what the filters made of a chunk's records, for the shell to
// look up and for ApplyUsage to fold with. Reuse one for every chunk.
type Probe struct {
	// Needs lists the records whose ids the card's filters cannot rule
	// out: the shell looks them up in the index and puts the answers in
	// Found, by record.
	Needs  []Need
	Found  []Lookup
	cards  []*Card // each record's card, nil for an unknown one
	keys   []uint64
	probes []probe // the live cards' filter slots, in record order
	// touched keeps the loads that bring a chunk's filters into the
	// cache from being optimized away.
	touched uint16
}

// Probe fills pr for a chunk: each record's card and id hash (ApplyUsage
// reuses them), and the records the shell must look up in the index: those
// whose ids the card's filters cannot rule out and that the card did not
// count since the last checkpoint (it knows those itself). A record of an
// unknown or cancelled card needs none. Found is reset to no answers.
func (p *Partition) Probe(h *cdr.ChunkHeader, recs []cdr.Record, pr *Probe) {
	pr.Needs, pr.cards, pr.keys = pr.Needs[:0], pr.cards[:0], pr.keys[:0]
	pr.Found = append(pr.Found[:0], make([]Lookup, len(recs))...)
	for i := range recs {
		c, _ := p.card(recs[i].ICCID)
		pr.cards, pr.keys = append(pr.cards, c), append(pr.keys, cdr.IDHash(h.Carrier, recs[i].RecordID))
	}
	// The filters in passes over groups of records: the cards, then
	// every record's buckets found, then searched. A pass's reads of
	// different records do not wait on each other, so their trips to
	// memory overlap where one record's slots at a time would make them
	// one after another; a group is small enough that what one pass
	// brought into the cache is still there for the next.
	for lo := 0; lo < len(recs); lo += probeGroup {
		p.probeGroup(pr, lo, min(lo+probeGroup, len(recs)))
	}
}

// probeGroup is how many records Probe takes through its passes at a time.
const probeGroup = 64

func (p *Partition) probeGroup(pr *Probe, lo, hi int) {
	cards, keys := pr.cards[lo:hi], pr.keys[lo:hi]
	touch := pr.touched
	for _, c := range cards {
		if c != nil {
			touch += uint16(c.fps[0].k) // the card's slots into the cache
		}
	}
	for i, c := range cards {
		if c != nil {
			h := fingerprint(keys[i])
			for s := range c.fps {
				touch += c.fps[s].offset(h) // their buckets' offsets
			}
		}
	}
	pr.probes = pr.probes[:0]
	for i, c := range cards {
		if c != nil && !c.cancelled {
			h := fingerprint(keys[i])
			for s := range c.fps {
				pr.probes = append(pr.probes, c.fps[s].at(h))
			}
		}
	}
	for _, q := range pr.probes {
		switch n := len(q.words); {
		case n > 0 && q.state == probeBucket:
			touch += q.words[0] + q.words[n-1] // the buckets into the cache
		case q.state == probeCoded && int(q.start/16) < n:
			touch += q.words[q.start/16]
		}
	}
	pr.touched = touch
	next := 0
	for i, c := range cards {
		if c == nil || c.cancelled {
			continue
		}
		q := pr.probes[next : next+len(c.fps)]
		next += len(c.fps)
		maybe := false
		for s := range q {
			maybe = maybe || q[s].has()
		}
		if !maybe {
			continue // the common case: certainly a new id
		}
		key := keys[i]
		if _, ok := c.recent.get(key); ok {
			continue // counted since the last checkpoint: the card knows it
		}
		// Any cycle the card still remembers: a slot's cycles under the
		// plan as it is now may not be those its ids counted in, if the
		// plan (or the card's) changed since.
		pr.Needs = append(pr.Needs, Need{Rec: lo + i, Card: uint64(c.ord), ID: key, From: c.keepFrom, To: math.MaxInt64})
	}
}

// TakeIDs appends to dst the ids counted since the last call, sorted in
// the index's order, and forgets them here: the caller adds them to the
// index, which answers for them from then on.
func (p *Partition) TakeIDs(dst []IndexEntry) []IndexEntry {
	// Sorted card by card, the cards in key order: many small sorts cost
	// far less than one of every id (a checkpoint takes them in the fold's
	// pause).
	n, total := len(dst), 0
	var cards []*Card
	for _, c := range p.order {
		if c.recent.len() > 0 {
			total += c.recent.len()
			cards = append(cards, c)
		}
	}
	slices.SortFunc(cards, func(a, b *Card) int { return cmp.Compare(uint64(a.ord), uint64(b.ord)) })
	dst = slices.Grow(dst, total)
	for _, c := range cards {
		from := len(dst)
		c.recent.each(func(k uint64, v seenRecord) {
			dst = append(dst, IndexEntry{Card: uint64(c.ord), ID: k, Seen: uint64(v)})
		})
		slices.SortFunc(dst[from:], CompareEntries)
		c.recent = idSet{}
	}
	if !slices.IsSortedFunc(dst[n:], CompareEntries) { // two cards of one key
		slices.SortFunc(dst[n:], CompareEntries)
	}
	return dst
}

// IndexFloor is the earliest cycle start any card still remembers ids of:
// index entries of cycles before it are forgotten by every card, and the
// index may drop them (a cancelled card remembers nothing).
func (p *Partition) IndexFloor() int64 {
	floor := int64(math.MaxInt64)
	for _, c := range p.order {
		if !c.cancelled {
			floor = min(floor, c.keepFrom)
		}
	}
	return floor
}

// FilterStats reports the filters' size: ids held and bytes of heap.
func (p *Partition) FilterStats() (ids, bytes int) {
	for _, c := range p.order {
		for s := range c.fps {
			ids += c.fps[s].len()
			bytes += 2 * cap(c.fps[s].data)
		}
	}
	return ids, bytes
}
