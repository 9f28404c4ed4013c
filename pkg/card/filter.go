package card

import "math/bits"

// fpSlot is the filter of the record ids one card remembers for one cycle:
// a 16-bit fingerprint per id, in 2^k buckets chosen by the top k bits of
// the id's hash and sorted within each bucket. A lookup reads the bucket's
// few fingerprints; an id whose fingerprint is absent was certainly never
// remembered, and one whose fingerprint is present probably was: the exact
// index (off the heap, see pkg/index) decides. The chance of a false "maybe"
// is about (ids per bucket) / 65536.
//
// k is fixed when the slot opens, from how many ids the card's previous
// cycle had (about 32 ids per bucket), since a fingerprint keeps no bits to
// split a bucket with later. data holds the 2^k+1 bucket offsets, then the
// fingerprints: 2 bytes per id and 2 per bucket. A slot holds at most
// maxSlotIDs fingerprints; past that it is saturated and answers "maybe"
// for every id, which costs an exact lookup per record but is never wrong.
//
// A slot with nothing to size it from (a card's first cycle, or one after
// a cycle with few ids) opens young: it keeps 32 bits of each id's
// fingerprint, sorted, as two words each (high, low), and is searched by
// bisection. When its cycle closes it knows its count, and becomes a
// bucketed slot sized for it (seal): 32 bits are enough for any k and
// 16-bit fingerprints. A young slot costs 4 bytes an id, only while its
// cycle is current; sized by guess instead, a card's first cycle would
// keep one bucket and a false "maybe" rate of ids/65536 for three cycles.
type fpSlot struct {
	data      []uint16
	k         uint8
	saturated bool
	young     bool
	coded     bool  // sealed and coded (coded.go)
	hb        uint8 // a coded slot's group bits
}

const (
	maxSlotIDs     = 1<<16 - 1
	idsPerBucket   = 32
	maxBucketBits  = 11
	fingerprintLen = 16
)

// bucketBits is the k for a slot expected to hold n ids.
func bucketBits(n int) uint8 {
	return uint8(min(bits.Len(uint(n/idsPerBucket)), maxBucketBits))
}

// openSlot is the slot of a cycle that opens after one of n ids: sized
// for as many, or young when n is too few to size a slot from (k ≤ 1).
func openSlot(n int) fpSlot {
	if n < 2*idsPerBucket {
		return fpSlot{young: true}
	}
	return fpSlot{k: bucketBits(n)}
}

// fingerprint spreads a record id hash (cdr.IDHash is already a hash, but
// the index keys on it, so the filter takes other bits of a remix).
func fingerprint(id uint64) uint64 { return mix(id ^ 0x5851F42D4C957F2D) }

func (s *fpSlot) split(h uint64) (bucket int, fp uint16) {
	if s.k == 0 {
		return 0, uint16(h >> (64 - fingerprintLen))
	}
	return int(h >> (64 - s.k)), uint16(h >> (64 - fingerprintLen - s.k))
}

func (s *fpSlot) buckets() int { return 1 << s.k }

// len is the number of fingerprints held (a saturated slot counts as
// full, so that the next cycle's slot is sized for a heavy card).
func (s *fpSlot) len() int {
	switch {
	case s.saturated:
		return maxSlotIDs
	case s.young:
		return len(s.data) / 2
	case s.coded:
		return int(s.data[s.buckets()])
	case len(s.data) == 0:
		return 0
	}
	return len(s.data) - s.buckets() - 1
}

// youngAt is the young slot's fingerprint i, and youngFind the first i
// whose fingerprint is ≥ fp.
func (s *fpSlot) youngAt(i int) uint32 { return uint32(s.data[2*i])<<16 | uint32(s.data[2*i+1]) }

func (s *fpSlot) youngFind(fp uint32) int {
	lo, hi := 0, len(s.data)/2
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.youngAt(m) < fp {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// probe is one slot's part of a lookup, taken in two steps so that a
// chunk's lookups overlap their trips to memory (Partition.Probe): at
// reads the bucket's bounds, has its fingerprints.
type probe struct {
	words []uint16 // the bucket's fingerprints; a young slot's all; a coded slot's bits
	fp    uint32
	start uint32 // a coded bucket's first bit
	n     uint16 // and its fingerprints
	state uint8  // probeBucket, probeYoung, probeCoded, probeMaybe
	hb    uint8
}

const (
	probeBucket = iota
	probeYoung
	probeCoded
	probeMaybe
)

// at is the first step of a lookup of an id whose fingerprint is h.
func (s *fpSlot) at(h uint64) probe {
	switch {
	case s.saturated:
		return probe{state: probeMaybe}
	case len(s.data) == 0:
		return probe{}
	case s.young:
		return probe{words: s.data, fp: uint32(h >> 32), state: probeYoung}
	}
	b, fp := s.split(h)
	nb := s.buckets() + 1
	lo, hi := int(s.data[b]), int(s.data[b+1])
	if s.coded {
		return probe{words: s.data[nb:], fp: uint32(fp), start: uint32(codedStart(s.hb, b, lo)), n: uint16(hi - lo), hb: s.hb, state: probeCoded}
	}
	return probe{words: s.data[nb+lo : nb+hi], fp: uint32(fp)}
}

// offset is the word at reads first, for a pass that brings it into the
// cache ahead of at.
func (s *fpSlot) offset(h uint64) uint16 {
	if s.young || len(s.data) == 0 {
		return 0
	}
	b, _ := s.split(h)
	return s.data[b]
}

// has is the second: whether the slot may hold the id.
func (q *probe) has() bool {
	switch q.state {
	case probeMaybe:
		return true
	case probeCoded:
		return q.n > 0 && codedHas(q.words, uint(q.start), int(q.n), q.hb, uint16(q.fp))
	case probeYoung:
		y := fpSlot{data: q.words, young: true}
		i := y.youngFind(q.fp)
		return i < len(q.words)/2 && y.youngAt(i) == q.fp
	}
	// A bucket's fingerprints are sorted and spread evenly over 16 bits:
	// start where fp would be, and walk the step or two to it.
	w, fp := q.words, uint16(q.fp)
	if len(w) == 0 {
		return false
	}
	i := len(w) * int(fp) >> fingerprintLen
	for i > 0 && w[i] > fp {
		i--
	}
	for i < len(w) && w[i] < fp {
		i++
	}
	return i < len(w) && w[i] == fp
}

// mayHave reports whether the id may be in the slot.
func (s *fpSlot) mayHave(id uint64) bool {
	q := s.at(fingerprint(id))
	return q.has()
}

// add puts the id's fingerprint in the slot.
func (s *fpSlot) add(id uint64) {
	if s.saturated {
		return
	}
	if s.len() >= maxSlotIDs {
		*s = fpSlot{k: s.k, saturated: true}
		return
	}
	s.uncode() // a late record into a closed cycle
	if s.young {
		fp := uint32(fingerprint(id) >> 32)
		i := 2 * s.youngFind(fp)
		s.grow(2)
		s.data = append(s.data, 0, 0)
		copy(s.data[i+2:], s.data[i:])
		s.data[i], s.data[i+1] = uint16(fp>>16), uint16(fp)
		return
	}
	nb := s.buckets() + 1
	if len(s.data) == 0 {
		s.data = make([]uint16, nb, nb+4)
	}
	b, fp := s.split(fingerprint(id))
	i := nb + int(s.data[b])
	for end := nb + int(s.data[b+1]); i < end && s.data[i] < fp; i++ {
	}
	s.grow(1)
	s.data = append(s.data, 0)
	copy(s.data[i+1:], s.data[i:])
	s.data[i] = fp
	for j := b + 1; j < nb; j++ {
		s.data[j]++
	}
}

// grow makes room for n more words: an eighth more, since a card holds
// many slots, and the spare room of a doubling would cost more than the
// fingerprints. Appended to nothing, the new array's capacity is all the
// allocator gives for its size: no room paid for and unused.
func (s *fpSlot) grow(n int) {
	if len(s.data)+n > cap(s.data) {
		grown := append([]uint16(nil), make([]uint16, len(s.data)+max(n, len(s.data)/8+8))...)
		copy(grown, s.data)
		s.data = grown[:len(s.data)]
	}
}

// seal turns a young slot whose cycle closed into a bucketed one sized
// for its count, exactly: bucket and 16-bit fingerprint are the top k and
// next 16 bits of the 32 it kept, so its sorted order is already theirs.
func (s *fpSlot) seal() {
	if !s.young {
		return
	}
	n := s.len()
	sealed := fpSlot{k: bucketBits(n)}
	if n > 0 {
		nb := sealed.buckets() + 1
		sealed.data = make([]uint16, nb+n)
		for i := 0; i < n; i++ {
			f := s.youngAt(i)
			b := int(uint64(f) >> (32 - uint(sealed.k)))
			sealed.data[b+1]++
			sealed.data[nb+i] = uint16(f >> (32 - fingerprintLen - uint(sealed.k)))
		}
		for b := 1; b < nb; b++ {
			sealed.data[b] += sealed.data[b-1]
		}
	}
	*s = sealed
}

// trim gives back the spare room of a slot that will rarely grow again.
func (s *fpSlot) trim() {
	if cap(s.data) > len(s.data) {
		exact := make([]uint16, len(s.data))
		copy(exact, s.data)
		s.data = exact
	}
}

// packClosed puts the filters of the card's closed cycles side by side in
// one exactly sized array: they rarely grow again (a late record), every
// new record reads them all, and adjacent they cost one trip to memory
// where apart they cost one each. A slot that grows later moves out. The
// array is cut from a slab the partition shares among cards (sl), so it
// costs its words and no allocator rounding.
func (c *Card) packClosed(sl *slab) {
	n := 0
	for i := 1; i < len(c.fps); i++ {
		n += len(c.fps[i].data)
	}
	if n == 0 {
		return
	}
	all := sl.alloc(n)
	off := 0
	for i := 1; i < len(c.fps); i++ {
		d := c.fps[i].data
		if len(d) == 0 {
			continue
		}
		copy(all[off:], d)
		c.fps[i].data = all[off : off+len(d) : off+len(d)]
		off += len(d)
	}
}

// slab hands out exactly sized word arrays cut from large blocks. A block
// is freed by the collector once no card uses a part of it. Each plan has
// its own: its cards roll over at one moment, so the blocks of a cycle's
// packs are freed together when the next cycle's replace them.
type slab struct{ free []uint16 }

// slab is the plan's slab; a card whose plan is unknown (a checkpoint
// being restored out of order) gets one of its own.
func (pl *plan) slab() *slab {
	if pl == nil {
		return &slab{}
	}
	if pl.packs == nil {
		pl.packs = &slab{}
	}
	return pl.packs
}

const slabWords = 1 << 15 // 64 KiB blocks

func (sl *slab) alloc(n int) []uint16 {
	if n > len(sl.free) {
		if n > slabWords/4 {
			return make([]uint16, n) // a large pack alone
		}
		sl.free = make([]uint16, slabWords)
	}
	out := sl.free[:n:n]
	sl.free = sl.free[n:]
	return out
}
