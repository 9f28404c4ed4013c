package card

import (
	"math/rand/v2"
	"slices"
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

// A coded slot answers exactly as the plain slot it was coded from, in
// fewer words, and uncodes back to the same words (a late record).
func TestCodedSlotAnswersAsThePlainOne(t *testing.T) {
	for _, tc := range []struct {
		n int
		k uint8
	}{{1, 0}, {5, 0}, {40, 0}, {700, bucketBits(700)}, {700, 0}, {3000, bucketBits(3000)}, {3000, 2}, {200, bucketBits(5000)}, {60000, maxBucketBits}} {
		r := rand.New(rand.NewPCG(uint64(tc.n), uint64(tc.k)+99))
		plain := fpSlot{k: tc.k}
		var ids []uint64
		for i := 0; i < tc.n; i++ {
			id := r.Uint64()
			ids = append(ids, id)
			plain.add(id)
		}
		plain.trim()
		coded := plain
		coded.data = append([]uint16(nil), plain.data...)
		coded.code()
		if tc.n >= 40 && tc.n >= 2<<tc.k && (!coded.coded || len(coded.data) >= len(plain.data)) {
			t.Fatalf("n=%d k=%d: coded=%v in %d words, plain %d", tc.n, tc.k, coded.coded, len(coded.data), len(plain.data))
		}
		if coded.len() != tc.n || !coded.wordsMatch(tc.n) {
			t.Fatalf("n=%d k=%d: coded len %d, words match %v", tc.n, tc.k, coded.len(), coded.wordsMatch(tc.n))
		}
		for _, id := range ids {
			if !coded.mayHave(id) {
				t.Fatalf("n=%d k=%d: id %x lost in coding", tc.n, tc.k, id)
			}
		}
		// nearby fingerprints too: the same bucket, groups and low bits
		// either side of the members'
		for i := 0; i < 300000; i++ {
			id := r.Uint64()
			if i%2 == 0 {
				id = ids[r.IntN(len(ids))] ^ (1 << r.IntN(40))
			}
			if coded.mayHave(id) != plain.mayHave(id) {
				t.Fatalf("n=%d k=%d: id %x coded says %v, plain %v", tc.n, tc.k, id, coded.mayHave(id), plain.mayHave(id))
			}
		}
		back := coded
		back.uncode()
		if back.coded || !slices.Equal(back.data, plain.data) {
			t.Fatalf("n=%d k=%d: uncoded words differ from the plain slot's", tc.n, tc.k)
		}
		late := r.Uint64()
		coded.add(late)
		if coded.coded || !coded.mayHave(late) || coded.len() != tc.n+1 {
			t.Fatalf("n=%d k=%d: a late id into a coded slot: coded=%v found=%v len=%d", tc.n, tc.k, coded.coded, coded.mayHave(late), coded.len())
		}
	}
}
