package card

import "math/bits"

// A closed cycle's filter slot is sealed: it rarely grows again (a late
// record), and two of a card's three slots are closed. Coded, a sealed
// slot keeps the same 16-bit fingerprints in fewer bits, so it answers
// exactly as before, at the same false "maybe" rate:
//
// A bucket's fingerprints are sorted and spread evenly over 16 bits. Each
// is split into its top hb bits (its group, one of 2^hb) and the low
// 16-hb. The bucket is written as the groups' sizes in unary (for each
// group, a one per fingerprint in it, then a zero), then the low bits of
// every fingerprint in order (Elias–Fano). With 2^hb near the bucket's
// size, that is about 13 bits a fingerprint where the plain slot takes 16.
//
// The bucket offsets stay as in a plain slot, counted in fingerprints, so
// a bucket's first bit is computed, not stored: bucket j starts at bit
// (17-hb)·offset[j] + j·2^hb of the words after the offsets.

// code codes a sealed, plain slot when that is smaller; any other slot
// stays as it is.
func (s *fpSlot) code() {
	if s.young || s.saturated || s.coded || len(s.data) == 0 {
		return
	}
	n, nb := s.len(), s.buckets()+1
	best, bestBits := -1, 16*n // coded only where it saves
	for hb := 0; hb <= fingerprintLen; hb++ {
		if b := codedBits(n, s.buckets(), uint8(hb)); b < bestBits {
			best, bestBits = hb, b
		}
	}
	if best < 0 {
		return
	}
	hb := uint8(best)
	data := make([]uint16, nb+(bestBits+15)/16)
	copy(data, s.data[:nb])
	w := data[nb:]
	low := fingerprintLen - uint(hb)
	for j := 0; j < s.buckets(); j++ {
		lo, hi := int(s.data[j]), int(s.data[j+1])
		start := codedStart(hb, j, lo)
		// unary group sizes
		p, g := start, uint(0)
		for _, f := range s.data[nb+lo : nb+hi] {
			for ; g < uint(f)>>low; g++ {
				p++ // a zero: the end of group g
			}
			w[p/16] |= 1 << (p % 16)
			p++
		}
		// the low bits, after all 2^hb zeros
		p = start + uint(hi-lo) + 1<<hb
		for _, f := range s.data[nb+lo : nb+hi] {
			putBits(w, p, low, uint64(f)&(1<<low-1))
			p += low
		}
	}
	*s = fpSlot{data: data, k: s.k, coded: true, hb: hb}
}

// wordsMatch reports whether a restored slot's offsets hold up: from 0,
// never falling, to n fingerprints, with the words those take.
func (s *fpSlot) wordsMatch(n int) bool {
	for j := 0; j < s.buckets(); j++ {
		if s.data[j] > s.data[j+1] {
			return false
		}
	}
	words := n
	if s.coded {
		words = (codedBits(n, s.buckets(), s.hb) + 15) / 16
	}
	return s.data[0] == 0 && len(s.data) == s.buckets()+1+words
}

// codedBits is the size in bits of a coded slot of n fingerprints in
// buckets buckets, groups of hb bits.
func codedBits(n, buckets int, hb uint8) int {
	return n*(fingerprintLen+1-int(hb)) + buckets<<hb
}

// codedStart is the first bit of bucket j, whose fingerprints start at
// offset off.
func codedStart(hb uint8, j, off int) uint {
	return uint(fingerprintLen+1-int(hb))*uint(off) + uint(j)<<hb
}

// uncode turns a coded slot back into a plain one, in its own memory:
// a late record is about to grow it.
func (s *fpSlot) uncode() {
	if !s.coded {
		return
	}
	n, nb := s.len(), s.buckets()+1
	data := make([]uint16, nb+n)
	copy(data, s.data[:nb])
	w := s.data[nb:]
	low := fingerprintLen - uint(s.hb)
	out := data[nb:]
	for j := 0; j < s.buckets(); j++ {
		lo, hi := int(s.data[j]), int(s.data[j+1])
		start := codedStart(s.hb, j, lo)
		lows := start + uint(hi-lo) + 1<<s.hb
		i, g := lo, uint(0)
		for p := start; i < hi; p++ {
			if w[p/16]>>(p%16)&1 == 0 {
				g++
				continue
			}
			out[i] = uint16(g<<low | uint(bitsAt(w, lows+uint(i-lo)*low)&(1<<low-1)))
			i++
		}
	}
	*s = fpSlot{data: data, k: s.k}
}

// codedHas reports whether the coded bucket of n fingerprints that
// starts at bit start of w holds fp.
func codedHas(w []uint16, start uint, n int, hb uint8, fp uint16) bool {
	low := fingerprintLen - uint(hb)
	g := uint(fp) >> low
	p := start // group g's first bit: after the zeros that end groups 0..g-1
	if g > 0 {
		p = selectZero(w, start, g-1) + 1
	}
	first := p - start - g // fingerprints before group g
	c := uint(0)           // and in it: the ones from p on
	for {
		ones := uint(bits.TrailingZeros64(^bitsAt(w, p)))
		if ones < 48 {
			c += ones
			break
		}
		c, p = c+48, p+48
	}
	lows := start + uint(n) + 1<<hb
	want := uint64(fp) & (1<<low - 1)
	for i := first; i < first+c; i++ {
		if bitsAt(w, lows+i*low)&(1<<low-1) == want {
			return true
		}
	}
	return false
}

// selectZero is the position of the r-th zero bit (counting from 0) at or
// after bit p of w.
func selectZero(w []uint16, p, r uint) uint {
	for {
		x := ^bitsAt(w, p) & (1<<48 - 1)
		z := uint(bits.OnesCount64(x))
		if r >= z {
			r, p = r-z, p+48
			continue
		}
		// skip whole bytes, then the last few zeros one by one
		for b := uint(bits.OnesCount8(uint8(x))); r >= b; b = uint(bits.OnesCount8(uint8(x))) {
			r, x, p = r-b, x>>8, p+8
		}
		for ; r > 0; r-- {
			x &= x - 1
		}
		return p + uint(bits.TrailingZeros64(x))
	}
}

// bitsAt returns at least 48 bits of w from bit p on (bit p lowest);
// bits past the end of w read as zero.
func bitsAt(w []uint16, p uint) uint64 {
	i := int(p / 16)
	if i+3 < len(w) {
		return (uint64(w[i]) | uint64(w[i+1])<<16 | uint64(w[i+2])<<32 | uint64(w[i+3])<<48) >> (p % 16)
	}
	var x uint64
	for j := 0; j < 4 && i+j < len(w); j++ {
		x |= uint64(w[i+j]) << (16 * j)
	}
	return x >> (p % 16)
}

// putBits writes the n low bits of v (n ≤ 16) at bit p of w, which holds
// zeros there.
func putBits(w []uint16, p, n uint, v uint64) {
	if n == 0 {
		return
	}
	x := v << (p % 16)
	w[p/16] |= uint16(x)
	if p%16+n > 16 {
		w[p/16+1] |= uint16(x >> 16)
	}
}
