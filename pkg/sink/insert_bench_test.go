package sink_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/pkg/event"
	. "github.com/cardmeter/cardmeter/pkg/sink"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// BenchmarkUsageInsert is the sink's side of an insert into usage_records:
// blocks of 50,000 rows (20 chunks of 2,500, strings of a carrier's
// sizes), one writer from block to block as a unit keeps it. ns/op and
// B/op are per block; rows/s and cpu-ns/row (this process's CPU) are per
// row. ClickHouse's own work is on its side of the connection, not in
// these figures.
func BenchmarkUsageInsert(b *testing.B) {
	conn := migratedConn(b)
	ctx := context.Background()
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

// migratedConn is a connection to a fresh database with the sink's tables.
func migratedConn(tb testing.TB) driver.Conn {
	tb.Helper()
	ch := testenv.ClickHouse(tb)
	conn := testenv.ClickHouseConn(tb, ch)
	if err := Migrate(context.Background(), conn, ch); err != nil {
		tb.Fatal(err)
	}
	return conn
}

// cpuTime is the CPU this process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A block large enough for the string columns to be sized before they are
// filled goes in whole: every row, every value, and no blank row left by
// the sizing.
func TestUsageInsertKeepsEveryValue(t *testing.T) {
	conn := migratedConn(t)
	ctx := context.Background()
	var chunks []*event.Accepted
	const rows = 3000 // 3000 record ids of 11 bytes: past the sizing's floor
	for c := 0; c < 3; c++ {
		a := &event.Accepted{Partition: 1, Seq: uint64(c + 1), Carrier: "cucc", ReceivedAt: 1773140000}
		for j := 0; j < rows/3; j++ {
			a.Rows = append(a.Rows, event.AcceptedRow{Index: j, RecordID: fmt.Sprintf("rec-%d-%05d", c, j), ICCID: fmt.Sprintf("8986%015d", j),
				AccountID: "acct", PlanID: "plan", Start: 1773130000, End: 1773133600, BytesUp: uint64(j), BytesDown: 1,
				SessionID: fmt.Sprint("s", j), APN: "iot", RAT: "NR", IMEI: "35209900176148", CellID: fmt.Sprint("cell-", j), CycleStart: 1772294400})
		}
		chunks = append(chunks, a)
	}
	if n, err := UsageInserter(conn)(ctx, chunks); err != nil || n != rows {
		t.Fatalf("inserted %d rows (%v); want %d", n, err, rows)
	}
	var n, blankIDs, distinct, up uint64
	var idLen, cellLen uint64
	err := conn.QueryRow(ctx, `SELECT count(), countIf(record_id = ''), uniqExact(record_id), sum(bytes_up),
		sum(length(record_id)), sum(length(cell_id)) FROM usage_records`).Scan(&n, &blankIDs, &distinct, &up, &idLen, &cellLen)
	if err != nil {
		t.Fatal(err)
	}
	wantCell := uint64(0)
	for j := 0; j < rows/3; j++ {
		wantCell += 3 * uint64(len(fmt.Sprint("cell-", j)))
	}
	if n != rows || blankIDs != 0 || distinct != rows || up != 3*(rows/3)*(rows/3-1)/2 || idLen != rows*uint64(len("rec-0-00000")) || cellLen != wantCell {
		t.Fatalf("rows %d, blank ids %d, distinct ids %d, bytes up %d, id bytes %d, cell bytes %d", n, blankIDs, distinct, up, idLen, cellLen)
	}
	var id, iccid, cell string
	if err := conn.QueryRow(ctx, "SELECT record_id, iccid, cell_id FROM usage_records WHERE src_seq = 2 AND idx = 7").Scan(&id, &iccid, &cell); err != nil {
		t.Fatal(err)
	}
	if id != "rec-1-00007" || iccid != "8986000000000000007" || cell != "cell-7" {
		t.Fatalf("row (2, 7) holds %q %q %q", id, iccid, cell)
	}
}
