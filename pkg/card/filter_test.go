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
	var s fpSlot
	for i := uint64(0); i <= maxSlotIDs; i++ {
		s.add(i * 0x9E3779B97F4A7C15)
	}
	if !s.saturated || s.data != nil || !s.mayHave(12345) {
		t.Fatalf("saturated=%v words=%d", s.saturated, len(s.data))
	}
}
