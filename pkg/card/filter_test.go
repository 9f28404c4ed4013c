package card

import (
	"math/rand/v2"
	"testing"
)

// A filter slot never forgets an id it was given, and rarely claims one it
// was not: about (ids per bucket) / 65536 of the time when its bucket bits
// fit the count, more when the slot outgrows them.
func TestFilterSlotHasNoFalseNegatives(t *testing.T) {
	for _, tc := range []struct {
		n       int
		k       uint8
		maxRate float64
	}{{10, 0, 0.001}, {700, bucketBits(700), 0.002}, {3000, bucketBits(3000), 0.002}, {3000, 0, 0.08}} {
		r := rand.New(rand.NewPCG(uint64(tc.n), uint64(tc.k)))
		s := fpSlot{k: tc.k}
		in := map[uint64]bool{}
		for len(in) < tc.n {
			id := r.Uint64()
			in[id] = true
			s.add(id)
		}
		if s.len() != tc.n {
			t.Fatalf("n=%d k=%d: len %d", tc.n, tc.k, s.len())
		}
		for id := range in {
			if !s.mayHave(id) {
				t.Fatalf("n=%d k=%d: id %x added but not found", tc.n, tc.k, id)
			}
		}
		falsePos := 0
		const probes = 200000
		for i := 0; i < probes; i++ {
			if id := r.Uint64(); !in[id] && s.mayHave(id) {
				falsePos++
			}
		}
		if rate := float64(falsePos) / probes; rate > tc.maxRate {
			t.Errorf("n=%d k=%d: false positive rate %.4f, want ≤ %.4f", tc.n, tc.k, rate, tc.maxRate)
		}
		s.trim()
		if cap(s.data) != len(s.data) || 2*len(s.data) > 2*tc.n+2*(1<<tc.k)+2 {
			t.Errorf("n=%d k=%d: %d words after trim", tc.n, tc.k, len(s.data))
		}
	}
}

// A slot past maxSlotIDs saturates: it answers "maybe" to everything, so
// an exact lookup decides, and it holds no memory.
func TestFilterSlotSaturates(t *testing.T) {
	for _, s := range []fpSlot{{}, openSlot(0)} {
		for i := uint64(0); i <= maxSlotIDs; i++ {
			s.add(i * 0x9E3779B97F4A7C15)
		}
		if !s.saturated || s.young || s.data != nil || !s.mayHave(12345) || s.len() != maxSlotIDs {
			t.Fatalf("saturated=%v young=%v words=%d", s.saturated, s.young, len(s.data))
		}
	}
}

// A young slot (nothing to size it from) keeps 32 bits an id: it forgets
// nothing and claims about ids/2^32 falsely, whatever its count. Sealed
// when its cycle closes, it is a bucketed slot sized for its count that
// still holds every id, at the sized slot's false positive rate.
func TestYoungSlotSealsToASizedOne(t *testing.T) {
	for _, n := range []int{0, 1, 10, 63, 700, 3000} {
		r := rand.New(rand.NewPCG(uint64(n), 7))
		s := openSlot(0)
		if !s.young {
			t.Fatalf("a slot after an empty cycle should open young")
		}
		in := map[uint64]bool{}
		for len(in) < n {
			id := r.Uint64()
			in[id] = true
			s.add(id)
		}
		falsePositives := func(s *fpSlot) float64 {
			for id := range in {
				if !s.mayHave(id) {
					t.Fatalf("n=%d young=%v: id %x added but not found", n, s.young, id)
				}
			}
			fp := 0
			const probes = 200000
			for i := 0; i < probes; i++ {
				if id := r.Uint64(); !in[id] && s.mayHave(id) {
					fp++
				}
			}
			return float64(fp) / probes
		}
		if s.len() != n {
			t.Fatalf("n=%d: young len %d", n, s.len())
		}
		if rate := falsePositives(&s); rate > 0.0001 {
			t.Errorf("n=%d: young false positive rate %.5f", n, rate)
		}
		s.seal()
		if s.young || s.k != bucketBits(n) || s.len() != n {
			t.Fatalf("n=%d: sealed young=%v k=%d (want %d) len %d", n, s.young, s.k, bucketBits(n), s.len())
		}
		if rate := falsePositives(&s); rate > 0.002 {
			t.Errorf("n=%d: sealed false positive rate %.4f, want ≤ 0.002", n, rate)
		}
		// a late record into the sealed slot goes where a sized slot puts it
		late := r.Uint64()
		s.add(late)
		in[late] = true
		falsePositives(&s)
	}
	if s := openSlot(2 * idsPerBucket); s.young || s.k != bucketBits(2*idsPerBucket) {
		t.Errorf("a slot after a cycle of %d ids should be sized, got young=%v k=%d", 2*idsPerBucket, s.young, s.k)
	}
}
