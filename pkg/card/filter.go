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
	words []uint16 // the bucket's fingerprints; a young slot's all
	fp    uint32
	state uint8 // probeBucket, probeYoung, probeMaybe
}

const (
	probeBucket = iota
	probeYoung
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
	return probe{words: s.data[nb+int(s.data[b]) : nb+int(s.data[b+1])], fp: uint32(fp)}
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
	if s.saturated {
		return true
	}
	if len(s.data) == 0 {
		return false
	}
	if s.young {
		fp := uint32(fingerprint(id) >> 32)
		i := s.youngFind(fp)
		return i < len(s.data)/2 && s.youngAt(i) == fp
	}
	b, fp := s.split(fingerprint(id))
	nb := s.buckets() + 1
	for _, f := range s.data[nb+int(s.data[b]) : nb+int(s.data[b+1])] {
		if f >= fp {
			return f == fp
		}
	}
	return false
}

// add puts the id's fingerprint in the slot.
func (s *fpSlot) add(id uint64) {
	if s.saturated {
		return
	}
	if s.len() >= maxSlotIDs {
		s.saturated, s.young, s.data = true, false, nil
		return
	}
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

// grow makes room for n more words: by an eighth, since a card holds many
// slots, and the spare room of a doubling would cost more than the
// fingerprints.
func (s *fpSlot) grow(n int) {
	if len(s.data)+n > cap(s.data) {
		grown := make([]uint16, len(s.data), len(s.data)+len(s.data)/8+8)
		copy(grown, s.data)
		s.data = grown
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
// where apart they cost one each. A slot that grows later moves out.
func (c *Card) packClosed() {
	n := 0
	for i := 1; i < len(c.fps); i++ {
		n += len(c.fps[i].data)
	}
	if n == 0 {
		return
	}
	all := make([]uint16, n)
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
