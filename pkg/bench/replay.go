package bench

import (
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// ReplayReport is the replay figure: folding a whole log from scratch.
type ReplayReport struct {
	Cards, Records int
	Partitions     int
	Seconds        float64
	RecordsPerSec  float64
	HeapBytes      uint64 // heap in use after the replay, after a GC
	BytesPerCard   float64
}

// Replay folds, from scratch, a log of cards provisioning events and
// records usage records in chunks of 4096 (encoded and decoded as they are
// on the log), over partitions folded in parallel, one goroutine each at a
// time. It then reports the heap the folded state holds per card.
func Replay(cards, records, partitions int, log io.Writer) ReplayReport {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	rep := ReplayReport{Cards: cards, Records: records, Partitions: partitions}
	states := make([]*card.Partition, partitions)
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC).Unix()
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for part := 0; part < partitions; part++ {
		wg.Add(1)
		go func(part int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p := card.NewPartition()
			p.Apply(&card.Input{Type: card.TypeClockTicked, At: now}, nil)                                                                                                     //nolint:errcheck
			p.Apply(&card.Input{Type: card.TypePlanChanged, ID: "p", At: now, Plan: &card.PlanChanged{PlanID: "p", QuotaBytes: 1 << 40, TimeZone: card.DefaultTimeZone}}, nil) //nolint:errcheck
			var mine []string
			for i := 0; i < cards; i++ {
				acct := fmt.Sprint("acct", i%(cards/100+1))
				if broker.Partition(acct, partitions) != part {
					continue
				}
				iccid := iccidOf(i)
				mine = append(mine, iccid)
				in := card.Input{Type: card.TypeCardProvisioned, ID: "c", At: now, Card: &card.CardProvisioned{ICCID: iccid, AccountID: acct, PlanID: "p", Carrier: "cmcc", AutoStopOverQuota: true}}
				p.Apply(&in, nil) //nolint:errcheck
			}
			n := records * len(mine) / cards
			recs := make([]cdr.Record, 0, 4096)
			var verdicts []card.Verdict
			var out []card.Emitted
			var buf []byte
			h := cdr.ChunkHeader{Carrier: "cmcc", ReceivedAt: now}
			for done := 0; done < n; {
				recs = recs[:0]
				for j := 0; j < 4096 && done < n; j++ {
					recs = append(recs, cdr.Record{RecordID: fmt.Sprint("r", part, "-", done), ICCID: mine[done%len(mine)],
						Start: now - int64(done%86400), End: now - int64(done%86400) + 60, BytesUp: 300, BytesDown: 3000})
					done++
				}
				buf = cdr.AppendChunk(buf[:0], h, recs)
				var hh cdr.ChunkHeader
				decoded, err := cdr.DecodeChunk(buf, &hh, nil)
				if err != nil {
					panic(err)
				}
				verdicts, out = p.ApplyUsage(&hh, decoded, nil, verdicts, out[:0])
			}
			states[part] = p
		}(part)
	}
	wg.Wait()
	rep.Seconds = time.Since(start).Seconds()
	rep.RecordsPerSec = float64(records) / rep.Seconds
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	rep.HeapBytes = after.HeapInuse - base.HeapInuse
	rep.BytesPerCard = float64(rep.HeapBytes) / float64(cards)
	runtime.KeepAlive(states)
	if log != nil {
		fmt.Fprintf(log, "replay: %d cards, %d records in %.1f s (%.0f records/s); %.0f bytes of heap per card\n",
			cards, records, rep.Seconds, rep.RecordsPerSec, rep.BytesPerCard)
	}
	return rep
}
