package card

import (
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"math/rand/v2"
	"testing"
)

// The id set behaves as a map under any mix of puts, gets and prunes,
// including the key 0 and keys that collide on their slot.
func TestIDSetAgreesWithAMap(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		var s idSet
		m := map[uint64]seenRecord{}
		keySpace := uint64(1 + r.IntN(300))
		for op := 0; op < 5000; op++ {
			k := r.Uint64N(keySpace)
			if r.IntN(4) == 0 {
				k <<= 40 // keys alike in their low bits
			}
			switch r.IntN(10) {
			case 0:
				cut := seenRecord(r.Uint64N(1000))
				s.keep(func(v seenRecord) bool { return v >= cut })
				for mk, mv := range m {
					if mv < cut {
						delete(m, mk)
					}
				}
			case 1, 2, 3, 4:
				v := seenRecord(r.Uint64N(1000))
				s.put(k, v)
				m[k] = v
			default:
				got, ok := s.get(k)
				want, wok := m[k]
				if ok != wok || got != want {
					t.Fatalf("seed %d op %d: get(%d) = %d, %v; the map has %d, %v", seed, op, k, got, ok, want, wok)
				}
			}
			if s.len() != len(m) {
				t.Fatalf("seed %d op %d: %d keys, the map has %d", seed, op, s.len(), len(m))
			}
		}
		seen := map[uint64]seenRecord{}
		s.each(func(k uint64, v seenRecord) { seen[k] = v })
		if len(seen) != len(m) {
			t.Fatalf("seed %d: each gave %d keys, want %d", seed, len(seen), len(m))
		}
		for k, v := range m {
			if seen[k] != v {
				t.Fatalf("seed %d: each gave %d for %d, want %d", seed, seen[k], k, v)
			}
		}
	}
}

// Two sets with the same keys put in different orders encode alike.
func TestIDSetEncodingIgnoresHistory(t *testing.T) {
	var a, b idSet
	for i := uint64(0); i < 100; i++ {
		a.put(i*7919, seenRecord(i))
		b.put((99-i)*7919, seenRecord(99-i))
	}
	if string(encodeSeen(&a)) != string(encodeSeen(&b)) {
		t.Fatal("the same set encodes differently after another history")
	}
	var c idSet
	if err := decodeSeen(encodeSeen(&a), &c); err != nil || string(encodeSeen(&c)) != string(encodeSeen(&a)) {
		t.Fatalf("decode/encode: %v", err)
	}
}

// Every ICCID of 19 or 20 digits starting with 89 packs to its own number;
// anything else does not pack and is found through the string map.
func TestPackICCID(t *testing.T) {
	seen := map[uint64]string{}
	for _, s := range []string{"8986000000000000000", "89860000000000000000", "8900000000000000000", "89000000000000000000",
		"8999999999999999999", "89999999999999999999", "8986001234567890123", "89860012345678901231", "89860012345678901232"} {
		n, ok := cdr.PackICCID(s)
		if !ok {
			t.Fatalf("%s did not pack", s)
		}
		if other, dup := seen[n]; dup {
			t.Fatalf("%s and %s pack to %d", s, other, n)
		}
		seen[n] = s
	}
	for _, s := range []string{"", "c1", "898600000000000000", "898600000000000000000", "8886000000000000000", "8986000000000000x00"} {
		if _, ok := cdr.PackICCID(s); ok {
			t.Fatalf("%q packed", s)
		}
	}
	p := NewPartition()
	now := unix("2026-03-01T00:00:00+08:00")
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil) //nolint:errcheck
	for _, iccid := range []string{"89860012345678901231", "card-a"} {
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c-" + iccid, At: now, Card: &CardProvisioned{ICCID: iccid, AccountID: "a", PlanID: "p"}}, nil) //nolint:errcheck
		if c, ok := p.card(iccid); !ok || c.iccid != iccid {
			t.Fatalf("card %s not found after provisioning", iccid)
		}
	}
	if _, ok := p.card("89860012345678901232"); ok {
		t.Fatal("an unknown ICCID found")
	}
}
