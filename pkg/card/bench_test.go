package card

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// censusPartition is a partition of 125,000 cards (1M cards over 8
// partitions) of 100 accounts, a tenth of them stopped by hand.
func censusPartition(b *testing.B) *Partition {
	p := NewPartition()
	now := unix("2026-03-01T00:00:00+08:00")
	p.Apply(&Input{Type: TypeClockTicked, At: now}, nil)                                                                //nolint:errcheck
	p.Apply(&Input{Type: TypePlanChanged, ID: "p", At: now, Plan: &PlanChanged{PlanID: "p", QuotaBytes: 1 << 40}}, nil) //nolint:errcheck
	for i := 0; i < 125000; i++ {
		prefix := fmt.Sprintf("898600%013d", (i*7919)%125000) // not in ICCID order
		iccid := prefix + string(cdr.LuhnDigit(prefix))
		p.Apply(&Input{Type: TypeCardProvisioned, ID: "c", At: now, Card: &CardProvisioned{ICCID: iccid, AccountID: fmt.Sprint("a", i%100), PlanID: "p"}}, nil) //nolint:errcheck
		if i%10 == 0 {
			p.Apply(&Input{Type: TypeStopRequested, ID: fmt.Sprint("s", i), At: now, Command: &ManualCommand{ICCID: iccid, Operator: "op"}}, nil) //nolint:errcheck
		}
	}
	// one account in a hundred in arrears: its 1,250 cards stop for it
	p.Apply(&Input{Type: TypeChargeRequested, ID: "ch", At: now, Charge: &Charge{AccountID: "a7", ChargeID: "ch", AmountFen: 100}}, nil) //nolint:errcheck
	return p
}

// BenchmarkListCards reads a page of 100 cards of a 125,000-card
// partition, mid-way through: every card, the stopped ones (a tenth), one
// account's (a hundredth), and those in arrears (one in a hundred): the
// fold's pause for a page of a list; and the cancelled ones (none: a
// page that finds nothing).
func BenchmarkListCards(b *testing.B) {
	p := censusPartition(b)
	p.ListCards(Filter{}, "", 1) // the first list sorts the cards once
	mid := fmt.Sprintf("898600%013d", 62500)
	for _, c := range []struct {
		name string
		f    Filter
		want int
	}{{"all", Filter{}, 100}, {"stopped", Filter{Status: Stopped}, 100}, {"account", Filter{AccountID: "a42"}, 100},
		{"arrears", Filter{Reason: ReasonArrears}, 100}, {"cancelled", Filter{Status: Cancelled}, 0}} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if page := p.ListCards(c.f, mid, 100); len(page) != c.want {
					b.Fatalf("%d cards", len(page))
				}
			}
		})
	}
}

// BenchmarkCensus counts a partition of 125,000 cards (1M cards over 8
// partitions), a tenth of them stopped: the fold's pause for a census.
func BenchmarkCensus(b *testing.B) {
	p := censusPartition(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if c := p.Census(); c.Stopped != 12500+1125 || c.ByReason["manual"] != 12500 || c.ByReason["arrears"] != 1250 {
			b.Fatalf("census %+v", c)
		}
	}
}

// BenchmarkFoldWhileListing folds usage into a 125,000-card partition
// under its lock, alone, while another goroutine reads list pages of 100
// stopped cards under the same lock 20 times a second (consoles paging
// through the fleet), and while it reads them as fast as it can: the
// fold's rate each way, in records/s.
func BenchmarkFoldWhileListing(b *testing.B) {
	for _, c := range []struct {
		name  string
		every time.Duration // between pages; 0: no lister; -1: no pause
	}{{"alone", 0}, {"listing_20_per_s", 50 * time.Millisecond}, {"listing_flat_out", -1}} {
		listing := c.every != 0
		b.Run(c.name, func(b *testing.B) {
			p := censusPartition(b)
			var mu sync.Mutex
			iccids := make([]string, 0, 125000)
			for _, c := range p.order {
				iccids = append(iccids, c.iccid)
			}
			stop := make(chan struct{})
			var pages atomic.Int64
			var wg sync.WaitGroup
			if listing {
				wg.Add(1)
				go func() {
					defer wg.Done()
					after := ""
					for {
						select {
						case <-stop:
							return
						default:
						}
						mu.Lock()
						page := p.ListCards(Filter{Status: Stopped}, after, 100)
						mu.Unlock()
						pages.Add(1)
						if c.every > 0 {
							time.Sleep(c.every)
						}
						after = ""
						if len(page) == 100 {
							after = page[99].ICCID
						}
					}
				}()
			}
			now := p.now
			h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: now + 86400}
			recs := make([]cdr.Record, 4096)
			var verdicts []Verdict
			var out []Emitted
			b.ResetTimer()
			for done := 0; done < b.N; done += len(recs) {
				n := min(len(recs), b.N-done)
				for j := 0; j < n; j++ {
					k := done + j
					recs[j] = cdr.Record{RecordID: fmt.Sprint("r", k), ICCID: iccids[k%len(iccids)], Start: now + int64(k%80000), End: now + int64(k%80000) + 60, BytesDown: 900}
				}
				mu.Lock()
				verdicts, out = p.ApplyUsage(&h, recs[:n], nil, verdicts, out[:0])
				mu.Unlock()
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(pages.Load())/b.Elapsed().Seconds(), "pages/s")
		})
	}
}
