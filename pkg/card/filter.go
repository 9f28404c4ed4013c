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
type fpSlot struct {
	data      []uint16
	k         uint8
	saturated bool
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
	if s.saturated {
		return maxSlotIDs
	}
	if len(s.data) == 0 {
		return 0
	}
	return len(s.data) - s.buckets() - 1
}

// mayHave reports whether the id may be in the slot.
func (s *fpSlot) mayHave(id uint64) bool {
	if s.saturated {
		return true
	}
	if len(s.data) == 0 {
		return false
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
		s.saturated, s.data = true, nil
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
	if len(s.data) == cap(s.data) {
		// grow by an eighth: a card holds many slots, and the spare room
		// of a doubling would cost more than the fingerprints
		grown := make([]uint16, len(s.data), len(s.data)+len(s.data)/8+8)
		copy(grown, s.data)
		s.data = grown
	}
	s.data = append(s.data, 0)
	copy(s.data[i+1:], s.data[i:])
	s.data[i] = fp
	for j := b + 1; j < nb; j++ {
		s.data[j]++
	}
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
