package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/fold"
	"github.com/cardmeter/cardmeter/pkg/index"
	"github.com/cardmeter/cardmeter/pkg/projector"
)

// IndexConfig sizes the projector-state figure: a fleet with a realistic
// history of remembered record ids, folded and checkpointed as the
// projector does, in one partition (the cost per card and per id is the
// same in eight).
type IndexConfig struct {
	Cards      int
	IDsPerCard int    // remembered ids per card, over the current and two closed cycles
	Dir        string // where the index and checkpoint pieces go (removed first)
	// CheckpointRecords is how many records are folded between checkpoints
	// (at 20,000 records/s, a 10 s interval is 200,000).
	CheckpointRecords int
	// Baseline first folds the same records keeping every id in memory,
	// for the rate to compare with.
	Baseline bool
	// HeapProfile, when set, is where a heap profile is written when the
	// heap is measured.
	HeapProfile string
	// EmptyDisk also measures a restore on a machine with an empty disk:
	// the base pieces and index segments are put in a JetStream object
	// store (an embedded server), then read back as a projector does.
	EmptyDisk bool
	// FoldProfile, when set, is where CPU profiles of the two measured
	// folds of new records go: this path with the index in use, and this
	// path with ".mem" appended for the baseline (the build-up of the
	// history and the other phases are left out).
	FoldProfile string
}

// IndexReport is what RunIndex measured.
type IndexReport struct {
	Cards, IDs                int
	FoldSeconds               float64
	NewPerSec                 float64 // records folded per second, new ids, index in use (the third cycle)
	MemPerSec                 float64 // the same with every id in memory (Baseline)
	HitPerSec                 float64 // duplicates and late records (index hits) per second
	HeapBytes                 uint64
	HeapPerCard, HeapPerID    float64 // with the per-card part taken from the same fleet without history
	FilterBytesPerID          float64
	IndexEntries              int
	DiskBytes                 int64
	DiskPerID                 float64
	Checkpoints               int
	CheckpointSeconds         float64 // mean time to take, write and install a checkpoint's index segments and delta
	CheckpointDeltaBytes      float64 // mean bytes of a delta piece
	CheckpointSegmentBytes    float64 // mean bytes of the new index segments per checkpoint
	BaseBytes                 int64
	RestoreSeconds            float64 // base pieces decoded and the index opened, as a restart does
	EmptyDiskSeconds          float64 // the same from the object store alone, segments fetched to an empty folder
	LookupsPerNew, LookupsHit float64 // index lookups per record folded
}

// RunIndex folds cfg.IDsPerCard records per card over three cycles, with
// checkpoints (the new ids written to the index as segment files, a delta
// of the changed cards) every cfg.CheckpointRecords records, then reports
// memory, disk, checkpoint and restore figures, and the fold rate of new
// records and of re-sent ones (index hits).
func RunIndex(cfg IndexConfig, log io.Writer) (IndexReport, error) {
	rep := IndexReport{Cards: cfg.Cards}
	if err := os.RemoveAll(cfg.Dir); err != nil {
		return rep, err
	}
	idx, err := index.Open(filepath.Join(cfg.Dir, "index"), nil, nil)
	if err != nil {
		return rep, err
	}
	defer idx.Close()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	// a plan whose cycles are calendar months in Asia/Shanghai
	zone, err := card.Zone(card.DefaultTimeZone)
	if err != nil {
		return rep, err
	}
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, zone)
	now := t0.Unix() + 3600
	iccids := make([]string, cfg.Cards)
	for i := range iccids {
		iccids[i] = iccidOf(i)
	}
	provision := func() *card.Partition {
		p := card.NewPartition()
		p.Apply(&card.Input{Type: card.TypeClockTicked, At: now}, nil)                                                                                                     //nolint:errcheck
		p.Apply(&card.Input{Type: card.TypePlanChanged, ID: "p", At: now, Plan: &card.PlanChanged{PlanID: "p", QuotaBytes: 1 << 50, TimeZone: card.DefaultTimeZone}}, nil) //nolint:errcheck
		for i := range iccids {
			in := card.Input{Type: card.TypeCardProvisioned, ID: "c", At: now, Card: &card.CardProvisioned{ICCID: iccids[i], AccountID: fmt.Sprint("acct", i%1000), PlanID: "p", Carrier: "cmcc"}}
			p.Apply(&in, nil) //nolint:errcheck
		}
		return p
	}
	p := provision()
	runtime.GC()
	var fleet runtime.MemStats
	runtime.ReadMemStats(&fleet)
	cardBytes := float64(fleet.HeapAlloc-base.HeapAlloc) / float64(cfg.Cards)

	f := &fold.Folder{State: p, Index: idx}
	var pieces int64
	var cpTime time.Duration
	var segBytes int64
	checkpoint := func() error {
		start := time.Now()
		d, _, err := p.MarshalDelta(1024)
		if err != nil {
			return err
		}
		before := idx.Segments()
		if err := idx.Add(uint64(rep.Checkpoints+1), p.TakeIDs(nil), p.IndexFloor()); err != nil {
			return err
		}
		for i, b := range d {
			if err := os.WriteFile(filepath.Join(cfg.Dir, fmt.Sprint("delta-", i)), b, 0o644); err != nil {
				return err
			}
			pieces += int64(len(b))
		}
		cpTime += time.Since(start)
		// what this checkpoint wrote: its new segments (merges not counted)
		had := map[string]bool{}
		for _, si := range before {
			had[si.Name] = true
		}
		for _, si := range idx.Segments() {
			if !had[si.Name] && !strings.Contains(si.Name, "-m") {
				segBytes += si.Bytes
			}
		}
		rep.Checkpoints++
		return nil
	}

	// fold: each cycle a third of the ids, cards round-robin so each chunk
	// spreads over the fleet as live traffic does
	perCycle := func(c int) int { return cfg.IDsPerCard*(c+1)/3 - cfg.IDsPerCard*c/3 } // ids per card in cycle c
	var buf []byte
	recs := make([]cdr.Record, 0, 4096)
	sinceCP := 0
	var foldTime time.Duration
	var folded int
	withCheckpoints := true
	run := func(cycleStart int64, id func(card, j int) string, total int, onChunk func()) error {
		h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: cycleStart + 10*86400}
		for done := 0; done < total; {
			recs = recs[:0]
			for len(recs) < 4096 && done < total {
				c, j := done%cfg.Cards, done/cfg.Cards
				s := cycleStart + int64(j%20)*3600 + 7200
				recs = append(recs, cdr.Record{RecordID: id(c, j), ICCID: iccids[c], Start: s, End: s + 900, BytesUp: 300, BytesDown: 3000})
				done++
			}
			buf = cdr.AppendChunk(buf[:0], h, recs)
			start := time.Now()
			if _, err := f.Fold("meter.0.usage", uint64(folded+1), buf); err != nil {
				return err
			}
			foldTime += time.Since(start)
			folded += len(recs)
			sinceCP += len(recs)
			if onChunk != nil {
				onChunk()
			}
			if withCheckpoints && sinceCP >= cfg.CheckpointRecords {
				sinceCP = 0
				if err := checkpoint(); err != nil {
					return err
				}
			}
		}
		return nil
	}
	threeCycles := func(p *card.Partition, what string) (float64, error) {
		var rate float64
		cycle := t0
		for c := 0; c < 3; c++ {
			if c > 0 {
				cycle = cycle.AddDate(0, 1, 0)
				p.Apply(&card.Input{Type: card.TypeClockTicked, At: cycle.Unix() + 60}, nil) //nolint:errcheck
			}
			before, beforeT := folded, foldTime
			if err := run(cycle.Unix(), func(card, j int) string { return fmt.Sprint(c, "-", card, "-", j) }, perCycle(c)*cfg.Cards, nil); err != nil {
				return 0, err
			}
			rate = float64(folded-before) / (foldTime - beforeT).Seconds()
			if log != nil {
				fmt.Fprintf(log, "index: %s: cycle %d folded (%d records, %.0f/s, %d checkpoints so far)\n", what, c+1, folded-before, rate, rep.Checkpoints)
			}
		}
		// The fold's own rate: more new records into the current cycle,
		// with the history in place and no checkpoint in between (a
		// projector stores checkpoints in the background; their cost is
		// its own figure).
		cp := withCheckpoints
		withCheckpoints = false
		defer func() { withCheckpoints = cp }()
		before, beforeT := folded, foldTime
		fresh := min(cfg.Cards*perCycle(2), 2_000_000)
		stop, err := startProfile(cfg.FoldProfile, what != "with the index")
		if err != nil {
			return 0, err
		}
		if err := run(cycle.Unix(), func(card, j int) string { return fmt.Sprint("n-", card, "-", j) }, fresh, nil); err != nil {
			return 0, err
		}
		stop()
		rate = float64(folded-before) / (foldTime - beforeT).Seconds()
		if log != nil {
			fmt.Fprintf(log, "index: %s: %d more new records at %.0f/s\n", what, folded-before, rate)
		}
		return rate, nil
	}
	if rep.NewPerSec, err = threeCycles(p, "with the index"); err != nil {
		return rep, err
	}
	if err := checkpoint(); err != nil {
		return rep, err
	}
	lookupsNew := f.Lookups()
	rep.LookupsPerNew = float64(lookupsNew) / float64(folded)

	// re-sent records: the first cycle's (late, in a closed cycle) and the
	// current one's, all duplicates now: every one is an index hit
	hits := min(cfg.Cards*perCycle(0), 2_000_000)
	before, beforeT := folded, foldTime
	first := t0.Unix()
	withCheckpoints = false
	if err := run(first, func(card, j int) string { return fmt.Sprint(0, "-", card, "-", j) }, hits, nil); err != nil {
		return rep, err
	}
	withCheckpoints = true
	rep.HitPerSec = float64(folded-before) / (foldTime - beforeT).Seconds()
	rep.LookupsHit = float64(f.Lookups()-lookupsNew) / float64(folded-before)
	rep.FoldSeconds = foldTime.Seconds()

	runtime.GC()
	runtime.GC() // twice: pooled buffers (json's) survive one collection
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if cfg.HeapProfile != "" {
		if err := writeHeapProfile(cfg.HeapProfile); err != nil {
			return rep, err
		}
	}
	ids, filterBytes := p.FilterStats()
	rep.IDs = ids
	rep.HeapBytes = after.HeapAlloc - base.HeapAlloc
	rep.HeapPerCard = cardBytes
	rep.HeapPerID = (float64(rep.HeapBytes) - cardBytes*float64(cfg.Cards)) / float64(ids)
	rep.FilterBytesPerID = float64(filterBytes) / float64(ids)
	entries, disk, _ := idx.Stats()
	rep.IndexEntries, rep.DiskBytes = entries, disk
	rep.DiskPerID = float64(disk) / float64(entries)
	rep.CheckpointSeconds = cpTime.Seconds() / float64(rep.Checkpoints)
	rep.CheckpointDeltaBytes = float64(pieces) / float64(rep.Checkpoints)
	rep.CheckpointSegmentBytes = float64(segBytes) / float64(rep.Checkpoints)

	// restore: the base pieces decoded and the index opened, as a restart
	// on the same machine does (the files are local)
	basePieces, err := p.MarshalBase(1024)
	if err != nil {
		return rep, err
	}
	for _, b := range basePieces {
		rep.BaseBytes += int64(len(b))
	}
	segs := idx.Segments()
	runtime.KeepAlive(p)
	p, f = nil, nil
	runtime.GC()
	start := time.Now()
	rs := card.NewRestorer()
	for _, b := range basePieces {
		if err := rs.Add(b); err != nil {
			return rep, err
		}
	}
	restored, err := rs.Finish()
	if err != nil {
		return rep, err
	}
	idx2, err := index.Open(filepath.Join(cfg.Dir, "index"), segs, nil)
	if err != nil {
		return rep, err
	}
	rep.RestoreSeconds = time.Since(start).Seconds()
	idx2.Close()
	if cfg.EmptyDisk {
		if rep.EmptyDiskSeconds, err = restoreFromObjectStore(cfg.Dir, basePieces, segs); err != nil {
			return rep, err
		}
	}
	if restored.Cards() != cfg.Cards {
		return rep, fmt.Errorf("restored %d cards of %d", restored.Cards(), cfg.Cards)
	}
	if cfg.Baseline {
		// the same records into the same fleet, every id kept in memory
		// (no index, no checkpoints), as the fold kept them before the
		// index: the rate to compare with, in this run
		withCheckpoints, folded, foldTime = false, 0, 0
		f = &fold.Folder{State: provision()}
		if rep.MemPerSec, err = threeCycles(f.State, "every id in memory"); err != nil {
			return rep, err
		}
	}
	if log != nil {
		fmt.Fprintf(log, "index: %d cards, %d ids: heap %.0f B/card + %.2f B/id (filters %.2f B/id); index %d entries, %.1f B/id on disk; "+
			"checkpoint %.3f s (delta %.0f B, segments %.0f B) x%d; base %d B; restore %.2f s; fold new %.0f/s, hits %.0f/s; lookups %.4f/new, %.2f/hit\n",
			rep.Cards, rep.IDs, rep.HeapPerCard, rep.HeapPerID, rep.FilterBytesPerID, rep.IndexEntries, rep.DiskPerID,
			rep.CheckpointSeconds, rep.CheckpointDeltaBytes, rep.CheckpointSegmentBytes, rep.Checkpoints, rep.BaseBytes, rep.RestoreSeconds,
			rep.NewPerSec, rep.HitPerSec, rep.LookupsPerNew, rep.LookupsHit)
		if cfg.EmptyDisk {
			fmt.Fprintf(log, "index: restore on an empty disk, from the object store alone: %.2f s\n", rep.EmptyDiskSeconds)
		}
		if cfg.Baseline {
			fmt.Fprintf(log, "index: fold of new records with the index %.0f/s, every id in memory %.0f/s: %.0f%%\n", rep.NewPerSec, rep.MemPerSec, 100*rep.NewPerSec/rep.MemPerSec)
		}
	}
	return rep, nil
}

// startProfile starts a CPU profile to path (with ".mem" appended for the
// baseline); the returned func stops it. No path, no profile.
func startProfile(path string, baseline bool) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	if baseline {
		path += ".mem"
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// restoreFromObjectStore puts a checkpoint in a JetStream object store on
// an embedded server (setup), then restores it as a projector on a new
// machine does: the pieces read one at a time, the index's segments
// fetched into an empty folder (checked whole) and opened. It returns the
// time of the restore alone.
func restoreFromObjectStore(dir string, pieces [][]byte, segs []index.SegmentInfo) (float64, error) {
	srv, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: filepath.Join(dir, "jetstream"), Port: -1}, zap.NewNop())
	if err != nil {
		return 0, err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := broker.Connect(srv.ClientURL(), "bench-restore", zap.NewNop())
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	objs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "bench", Storage: jetstream.FileStorage})
	if err != nil {
		return 0, err
	}
	var names []string
	for i, b := range pieces {
		name := fmt.Sprintf("base-%04d", i)
		if _, err := objs.PutBytes(ctx, name, b); err != nil {
			return 0, err
		}
		names = append(names, name)
	}
	for _, si := range segs {
		if err := projector.StoreFile(ctx, objs, si.Name, filepath.Join(dir, "index", si.Name), si.Bytes); err != nil {
			return 0, err
		}
	}
	empty := filepath.Join(dir, "empty-disk")
	start := time.Now()
	rs := card.NewRestorer()
	for _, n := range names {
		b, err := objs.GetBytes(ctx, n)
		if err != nil {
			return 0, err
		}
		if err := rs.Add(b); err != nil {
			return 0, err
		}
	}
	if _, err := rs.Finish(); err != nil {
		return 0, err
	}
	sizes := map[string]int64{}
	for _, si := range segs {
		sizes[si.Name] = si.Bytes
	}
	idx, err := index.Open(empty, segs, func(name, path string) error {
		return projector.FetchFile(ctx, objs, name, path, sizes[name])
	})
	if err != nil {
		return 0, err
	}
	took := time.Since(start).Seconds()
	idx.Close()
	return took, nil
}
