package sink_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/event"
	. "github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// BenchmarkUsageInsert is the sink's side of an insert into usage_records:
// blocks of 50,000 rows (20 chunks of 2,500, strings of a carrier's
// sizes), one writer from block to block as a unit keeps it. ns/op and
// B/op are per block; rows/s and B/row say it per row. ClickHouse's own
// work is on its side of the connection, not in these figures.
func BenchmarkUsageInsert(b *testing.B) {
	ch := testenv.ClickHouse(b)
	conn := testenv.ClickHouseConn(b, ch)
	ctx := context.Background()
	if err := Migrate(ctx, conn, ch); err != nil {
		b.Fatal(err)
	}
	insert := UsageInserter(conn)
	const chunks, rows = 20, 2500
	block := func(round int) []*event.Accepted {
		out := make([]*event.Accepted, chunks)
		for c := range out {
			a := &event.Accepted{Partition: 0, Seq: uint64(round*chunks + c + 1), Carrier: "cmcc", ReceivedAt: 1773140000}
			for j := 0; j < rows; j++ {
				card := (c*rows + j) % 100000
				a.Rows = append(a.Rows, event.AcceptedRow{Index: j, RecordID: fmt.Sprintf("cmcc-%d-%06d-%04d", round, c, j),
					ICCID: fmt.Sprintf("8986%015d", card), AccountID: fmt.Sprintf("acct-%04d", card%1000), PlanID: "iot-1g",
					Start: 1773130000 + int64(j), End: 1773133600 + int64(j), BytesUp: 12345, BytesDown: 67890, Sequence: uint32(j),
					SessionID: fmt.Sprintf("sess-%08x", card), APN: "iot.cmcc", RAT: "LTE", IMEI: "35209900176148", CellID: "46000-1234-5678",
					CycleStart: 1772294400})
			}
			out[c] = a
		}
		return out
	}
	blocks := [2][]*event.Accepted{block(0), block(1)}
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bl := blocks[i%2]
		for c, a := range bl {
			a.Seq = uint64((i+1)*chunks + c) // a block past the last: no read-back
		}
		n, err := insert(ctx, bl)
		if err != nil || n != chunks*rows {
			b.Fatalf("inserted %d rows: %v", n, err)
		}
	}
	b.ReportMetric(float64(b.N*chunks*rows)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N*chunks*rows), "cpu-ns/row")
}

// cpuTime is the CPU this process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
