package bench

import (
	"testing"
)

// The state figure runs end to end on a small fleet: ids all indexed,
// re-sent records all found, a restore that gives back every card.
func TestRunIndexSmall(t *testing.T) {
	r, err := RunIndex(IndexConfig{Cards: 500, IDsPerCard: 60, Dir: t.TempDir(), CheckpointRecords: 5000, EmptyDisk: true, Baseline: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 60 a card over three cycles, then 20 a card more in the current one
	if want := 500 * 80; r.IDs != want || r.IndexEntries != want {
		t.Fatalf("%d ids in the filters, %d in the index; want %d", r.IDs, r.IndexEntries, want)
	}
	if r.LookupsHit < 0.99 || r.LookupsPerNew > 0.05 {
		t.Fatalf("lookups: %.3f per re-sent record, %.3f per new one", r.LookupsHit, r.LookupsPerNew)
	}
	if r.EmptyDiskSeconds <= 0 || r.MemPerSec <= 0 {
		t.Fatalf("empty-disk restore %.3f s, in-memory rate %.0f/s", r.EmptyDiskSeconds, r.MemPerSec)
	}
	if r.Checkpoints < 5 || r.DiskPerID > 20.2 {
		t.Fatalf("%d checkpoints, %.1f bytes per id on disk", r.Checkpoints, r.DiskPerID)
	}
}
