package card

import "math/bits"

// idSet maps the record ids a card counted (carrier and id hashed to 64
// bits) to what is remembered of each (seenRecord). It is an open-addressed
// table with linear probing in one slice of key/value pairs: a lookup reads
// the slot its hash names and, rarely, the next ones, where a Go map reads
// its header, its table and a group first. Finding a record id is most of
// the fold's time, as a card's ids are rarely in the CPU's cache.
//
// Key 0 marks an empty slot, so the id that hashes to 0 is held aside. The
// table holds no pointers, so the garbage collector never scans it. Its
// iteration order depends on its history: whatever must be deterministic
// (the snapshot) sorts.
type idSet struct {
	slots   []uint64 // key, value, key, value...; len is 2 × a power of two, or 0
	n       int      // keys held in slots
	hasZero bool     // key 0 is held
	zero    seenRecord
}

// mix spreads a key's bits over the slot index (Fibonacci hashing).
func mix(k uint64) uint64 { return k * 0x9E3779B97F4A7C15 }

func (s *idSet) len() int {
	if s.hasZero {
		return s.n + 1
	}
	return s.n
}

// get returns the value of key k.
func (s *idSet) get(k uint64) (seenRecord, bool) {
	if k == 0 {
		return s.zero, s.hasZero
	}
	if s.n == 0 {
		return 0, false
	}
	i := s.slot(k)
	if s.slots[2*i] != k {
		return 0, false
	}
	return seenRecord(s.slots[2*i+1]), true
}

// slot is where key k (not 0) is in the table, or the empty slot where it
// would go; the table has an empty slot.
func (s *idSet) slot(k uint64) int {
	capacity := len(s.slots) / 2
	mask := capacity - 1
	i := int(mix(k) >> (64 - bits.TrailingZeros(uint(capacity))))
	for s.slots[2*i] != k && s.slots[2*i] != 0 {
		i = (i + 1) & mask
	}
	return i
}

// put sets the value of key k.
func (s *idSet) put(k uint64, v seenRecord) {
	if k == 0 {
		s.hasZero, s.zero = true, v
		return
	}
	// at most three quarters full, so that probes stay short
	if capacity := len(s.slots) / 2; (s.n+1)*4 > capacity*3 {
		s.grow(max(8, capacity*2))
	}
	if s.insert(k, v) {
		s.n++
	}
}

// insert places k in the table, which has room; it reports whether k is new.
func (s *idSet) insert(k uint64, v seenRecord) bool {
	i := s.slot(k)
	fresh := s.slots[2*i] == 0
	s.slots[2*i], s.slots[2*i+1] = k, uint64(v)
	return fresh
}

// grow moves the keys into a table of the given capacity (a power of two).
func (s *idSet) grow(capacity int) {
	old := s.slots
	s.slots = make([]uint64, 2*capacity)
	for i := 0; i < len(old); i += 2 {
		if old[i] != 0 {
			s.insert(old[i], seenRecord(old[i+1]))
		}
	}
}

// each calls f for every key, in no set order.
func (s *idSet) each(f func(k uint64, v seenRecord)) {
	if s.hasZero {
		f(0, s.zero)
	}
	for i := 0; i < len(s.slots); i += 2 {
		if s.slots[i] != 0 {
			f(s.slots[i], seenRecord(s.slots[i+1]))
		}
	}
}

// keep drops every key whose value fails f, and shrinks the table to fit
// what remains (a card forgets its old cycles' ids once a cycle).
func (s *idSet) keep(f func(v seenRecord) bool) {
	if s.hasZero && !f(s.zero) {
		s.hasZero, s.zero = false, 0
	}
	old := s.slots
	n := 0
	for i := 0; i < len(old); i += 2 {
		if old[i] != 0 && f(seenRecord(old[i+1])) {
			n++
		}
	}
	if n == s.n {
		return
	}
	s.slots, s.n = nil, 0
	if n == 0 {
		return
	}
	capacity := 8
	for n*4 > capacity*3 {
		capacity *= 2
	}
	s.slots = make([]uint64, 2*capacity)
	for i := 0; i < len(old); i += 2 {
		if old[i] != 0 && f(seenRecord(old[i+1])) {
			s.insert(old[i], seenRecord(old[i+1]))
			s.n++
		}
	}
}
