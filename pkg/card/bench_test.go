package card

import (
	"fmt"
	"testing"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// BenchmarkApplyUsage folds usage chunks of 4096 records over 100,000
// cards (the hot path of the projector) with every record id kept in
// memory, as when there is no index: ns/op is per record, and so is
// allocs/op.
func BenchmarkApplyUsage(b *testing.B) { benchmarkApplyUsage(b, false) }

// BenchmarkApplyUsageIndexed is the same fold as the projector runs it:
// each chunk probed against the filters first, and the ids taken from
// the state every 50 chunks (a checkpoint; the index itself, off the heap,
// is not part of the fold: new records need no lookup).
func BenchmarkApplyUsageIndexed(b *testing.B) { benchmarkApplyUsage(b, true) }

func benchmarkApplyUsage(b *testing.B, indexed bool) {
	p := NewPartition()
	now := unix("2026-03-01T00:00:00+08:00")
	p.Apply(&Input{Type: TypeClockTicked, At: now}, nil)                                                                //nolint:errcheck
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil) //nolint:errcheck
	const cards = 100000
	iccids := make([]string, cards)
	for i := range iccids {
		prefix := fmt.Sprintf("898600%013d", i)
		iccids[i] = prefix + string(cdr.LuhnDigit(prefix))
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c", At: now, Card: &CardProvisioned{ICCID: iccids[i], AccountID: "a", PlanID: "p", AutoStopOverQuota: true}}, nil) //nolint:errcheck
	}
	const chunk = 4096
	recs := make([]cdr.Record, chunk)
	ids := make([]string, b.N+chunk)
	for i := range ids {
		ids[i] = fmt.Sprint("r", i)
	}
	h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: now + 86400}
	var verdicts []Verdict
	var out []Emitted
	var pr Probe
	var taken []IndexEntry
	b.ReportAllocs()
	b.ResetTimer()
	for done, chunks := 0, 0; done < b.N; done, chunks = done+chunk, chunks+1 {
		n := min(chunk, b.N-done)
		for j := 0; j < n; j++ {
			k := done + j
			recs[j] = cdr.Record{RecordID: ids[k], ICCID: iccids[k%cards], Start: now + int64(k%80000), End: now + int64(k%80000) + 60, BytesUp: 100, BytesDown: 900}
		}
		if !indexed {
			verdicts, out = p.ApplyUsage(&h, recs[:n], nil, verdicts, out[:0])
			continue
		}
		p.Probe(&h, recs[:n], &pr)
		verdicts, out = p.ApplyUsage(&h, recs[:n], &pr, verdicts, out[:0])
		if chunks%50 == 49 {
			taken = p.TakeIDs(taken[:0])
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkSnapshot marshals a partition of 12,500 cards with 50
// remembered record ids each (1M cards over 8 partitions, 10M records over
// a couple of cycles): the pause a snapshot costs the fold.
func BenchmarkSnapshot(b *testing.B) {
	p := NewPartition()
	now := unix("2026-03-01T00:00:00+08:00")
	p.Apply(&Input{Type: TypeClockTicked, At: now}, nil)                                                                //nolint:errcheck
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil) //nolint:errcheck
	var recs []cdr.Record
	for i := 0; i < 12500; i++ {
		prefix := fmt.Sprintf("898600%013d", i)
		iccid := prefix + string(cdr.LuhnDigit(prefix))
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c", At: now, Card: &CardProvisioned{ICCID: iccid, AccountID: "a", PlanID: "p"}}, nil) //nolint:errcheck
		for j := 0; j < 50; j++ {
			recs = append(recs, cdr.Record{RecordID: fmt.Sprint(i, "-", j), ICCID: iccid, Start: now + int64(j), End: now + int64(j) + 60, BytesDown: 1})
		}
	}
	p.ApplyUsage(&cdr.ChunkHeader{Carrier: "c", ReceivedAt: now + 3600}, recs, nil, nil, nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		snap, err := p.MarshalSnapshot()
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(snap)))
	}
}

// BenchmarkCensus counts a partition of 125,000 cards (1M cards over 8
// partitions), a tenth of them stopped: the fold's pause for a census.
func BenchmarkCensus(b *testing.B) {
	p := NewPartition()
	now := unix("2026-03-01T00:00:00+08:00")
	p.Apply(&Input{Type: TypeClockTicked, At: now}, nil)                                                                //nolint:errcheck
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil) //nolint:errcheck
	for i := 0; i < 125000; i++ {
		prefix := fmt.Sprintf("898600%013d", i)
		iccid := prefix + string(cdr.LuhnDigit(prefix))
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c", At: now, Card: &CardProvisioned{ICCID: iccid, AccountID: fmt.Sprint("a", i%100), PlanID: "p"}}, nil) //nolint:errcheck
		if i%10 == 0 {
			p.Apply(&Input{Type: TypeStopRequested, ID: fmt.Sprint("s", i), At: now, Command: &ManualCommand{ICCID: iccid, Operator: "op"}}, nil) //nolint:errcheck
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if c := p.Census(); c.Stopped != 12500 || c.ByReason["manual"] != 12500 {
			b.Fatalf("census %+v", c)
		}
	}
}
