package sim

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// BenchmarkSimulateMonth simulates an account of 10,000 cards over one
// month of records (a record every 6 hours per card: 1.2M records), in a
// partition that also holds another account of 10,000 cards whose
// records the simulation reads and leaves out: the log a simulation of a
// month reads, folded twice (as it was, and on a plan with twice the
// quota).
func BenchmarkSimulateMonth(b *testing.B) {
	const cards, perDay, days = 10000, 4, 30
	var log []msg
	input := func(in card.Input) {
		data, _ := json.Marshal(in)
		log = append(log, msg{broker.BillingSubject(0), data})
	}
	start := time.Date(2026, 2, 28, 16, 0, 0, 0, time.UTC).Unix() // March, Shanghai
	input(card.Input{Type: card.TypeClockTicked, At: start})
	input(card.Input{Type: card.TypePlanChanged, ID: "p", At: start, Plan: &card.PlanChanged{PlanID: "p", QuotaBytes: 100 << 20, MonthlyFeeFen: 1000, OverageFenPerMB: 10}})
	iccid := func(i int) string {
		p := fmt.Sprintf("898600%013d", i)
		return p + string(cdr.LuhnDigit(p))
	}
	for i := 0; i < 2*cards; i++ {
		acct := "big"
		if i%2 == 1 {
			acct = "other"
		}
		input(card.Input{Type: card.TypeCardProvisioned, ID: fmt.Sprint("c", i), At: start, Card: &card.CardProvisioned{ICCID: iccid(i), AccountID: acct, PlanID: "p", Carrier: "cmcc"}})
	}
	records := 0
	recs := make([]cdr.Record, 0, 4096)
	flush := func(at int64) {
		if len(recs) > 0 {
			log = append(log, msg{broker.UsageSubject(0), cdr.AppendChunk(nil, cdr.ChunkHeader{Carrier: "cmcc", BatchID: fmt.Sprint("b", len(log)), ReceivedAt: at}, recs)})
			recs = recs[:0]
		}
	}
	for d := 0; d < days; d++ {
		day := start + int64(d)*86400
		input(card.Input{Type: card.TypeClockTicked, At: day})
		for slot := 0; slot < perDay; slot++ {
			t := day + int64(slot)*6*3600
			for i := 0; i < 2*cards; i++ {
				recs = append(recs, cdr.Record{RecordID: fmt.Sprintf("r%d-%d-%d", i, d, slot), ICCID: iccid(i), Start: t, End: t + 600, BytesDown: 1 << 20})
				if i%2 == 0 {
					records++
				}
				if len(recs) == cap(recs) {
					flush(t + 700)
				}
			}
			flush(t + 700)
		}
	}
	input(card.Input{Type: card.TypeClockTicked, At: start + days*86400 + 86400})
	quota := uint64(200 << 20)
	req := Request{AccountID: "big", From: "2026-03-01T00:00:00+08:00", To: "2026-04-01T00:00:00+08:00", Plan: Override{QuotaBytes: &quota}}
	b.ResetTimer()
	var r Result
	for n := 0; n < b.N; n++ {
		s, err := New(req)
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range log {
			if err := s.Apply(m.subject, m.data); err != nil {
				b.Fatal(err)
			}
		}
		r = s.Result()
	}
	b.StopTimer()
	if len(r.Cards) != cards || r.SavingsFen <= 0 || r.Actual.UsageBytes != uint64(records)<<20 {
		b.Fatalf("%d cards, savings %d, usage %d", len(r.Cards), r.SavingsFen, r.Actual.UsageBytes)
	}
	b.ReportMetric(float64(records), "account_records")
	b.ReportMetric(float64(records)*float64(b.N)/b.Elapsed().Seconds(), "account_records/s")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/simulation")
}
