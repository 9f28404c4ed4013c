package bench

import (
	"context"
	"testing"
	"time"
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

// The webhook figure runs on a small load: every event delivered, each
// card's in order, every signature verified.
func TestWebhooksSmall(t *testing.T) {
	r, err := Webhooks(context.Background(), WebhookConfig{Dir: t.TempDir(), Rate: 200, For: 2 * time.Second, Burst: 2000, Cards: 50})
	if err != nil {
		t.Fatal(err)
	}
	if r.Events < 300 || r.BurstEvents != 2000 || r.P99 <= 0 || r.BurstPerSec <= 0 {
		t.Fatalf("%+v", r)
	}
	if r.Misordered != 0 || r.Unsigned != 0 {
		t.Fatalf("%d out of order, %d not verified", r.Misordered, r.Unsigned)
	}
}
