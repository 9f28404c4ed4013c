package broker

import (
	"fmt"
	"hash/fnv"
	"testing"
)

// The partition of an account is part of the log's layout: it must stay
// FNV-1a 32 of the id modulo the partition count.
func TestPartitionIsFNV1a(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 1000; i++ {
		acct := fmt.Sprint("acct-", i)
		h := fnv.New32a()
		h.Write([]byte(acct))
		want := int(h.Sum32() % 8)
		if got := Partition(acct, 8); got != want {
			t.Fatalf("Partition(%q, 8) = %d, want %d", acct, got, want)
		}
		seen[want] = true
	}
	if len(seen) != 8 {
		t.Fatalf("1000 accounts over %d of 8 partitions", len(seen))
	}
	if got := Partition("", 8); got != int(uint32(2166136261)%8) {
		t.Fatalf("empty account: %d", got)
	}
}
