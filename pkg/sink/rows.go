package sink

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/pkg/event"
)

// A row's key: its position in the log. The sink inserts each key once.
type rowKey struct {
	partition uint16
	seq       uint64
	idx       uint32
}

const usageInsert = `INSERT INTO usage_records (partition, src_seq, idx, carrier, record_id, iccid, account_id, plan_id,
 start_time, end_time, bytes_up, bytes_down, sequence, session_id, apn, rat, imei, cell_id, cycle_start, late,
 received_at, arrival_delay_s)`

// usageColumns gathers a block's usage rows column by column, to hand each
// column to the driver as one slice: appending row by row converted every
// value through an interface and was the sink's largest cost.
type usageColumns struct {
	partition                                        []uint16
	srcSeq                                           []uint64
	idx, sequence                                    []uint32
	carrier, recordID, iccid, accountID, planID      []string
	sessionID, apn, rat, imei, cellID                []string
	start, end, cycleStart, receivedAt, arrivalDelay []int64
	bytesUp, bytesDown                               []uint64
	late                                             []uint8
}

func newUsageColumns(rows int) *usageColumns {
	str := func() []string { return make([]string, 0, rows) }
	i64 := func() []int64 { return make([]int64, 0, rows) }
	return &usageColumns{
		partition: make([]uint16, 0, rows), srcSeq: make([]uint64, 0, rows),
		idx: make([]uint32, 0, rows), sequence: make([]uint32, 0, rows),
		carrier: str(), recordID: str(), iccid: str(), accountID: str(), planID: str(),
		sessionID: str(), apn: str(), rat: str(), imei: str(), cellID: str(),
		start: i64(), end: i64(), cycleStart: i64(), receivedAt: i64(), arrivalDelay: i64(),
		bytesUp: make([]uint64, 0, rows), bytesDown: make([]uint64, 0, rows), late: make([]uint8, 0, rows),
	}
}

// add appends the rows of an accepted chunk whose keys skip does not hold
// and returns how many it appended.
func (c *usageColumns) add(a *event.Accepted, skip map[rowKey]bool) int {
	n := 0
	for i := range a.Rows {
		r := &a.Rows[i]
		if skip[rowKey{uint16(a.Partition), a.Seq, uint32(r.Index)}] {
			continue
		}
		late := uint8(0)
		if r.Late {
			late = 1
		}
		c.partition = append(c.partition, uint16(a.Partition))
		c.srcSeq = append(c.srcSeq, a.Seq)
		c.idx = append(c.idx, uint32(r.Index))
		c.carrier = append(c.carrier, a.Carrier)
		c.recordID = append(c.recordID, r.RecordID)
		c.iccid = append(c.iccid, r.ICCID)
		c.accountID = append(c.accountID, r.AccountID)
		c.planID = append(c.planID, r.PlanID)
		c.start = append(c.start, r.Start)
		c.end = append(c.end, r.End)
		c.bytesUp = append(c.bytesUp, r.BytesUp)
		c.bytesDown = append(c.bytesDown, r.BytesDown)
		c.sequence = append(c.sequence, r.Sequence)
		c.sessionID = append(c.sessionID, r.SessionID)
		c.apn = append(c.apn, r.APN)
		c.rat = append(c.rat, r.RAT)
		c.imei = append(c.imei, r.IMEI)
		c.cellID = append(c.cellID, r.CellID)
		c.cycleStart = append(c.cycleStart, r.CycleStart)
		c.late = append(c.late, late)
		c.receivedAt = append(c.receivedAt, a.ReceivedAt)
		c.arrivalDelay = append(c.arrivalDelay, a.ReceivedAt-r.End)
		n++
	}
	return n
}

// appendTo hands the columns to a batch of usageInsert, in its column order.
func (c *usageColumns) appendTo(b driver.Batch) error {
	cols := []any{c.partition, c.srcSeq, c.idx, c.carrier, c.recordID, c.iccid, c.accountID, c.planID,
		c.start, c.end, c.bytesUp, c.bytesDown, c.sequence, c.sessionID, c.apn, c.rat, c.imei, c.cellID,
		c.cycleStart, c.late, c.receivedAt, c.arrivalDelay}
	if len(b.Columns()) != len(cols) {
		return fmt.Errorf("usage_records: the insert has %d columns, the block %d", len(b.Columns()), len(cols))
	}
	for i, col := range cols {
		if s, ok := col.([]string); ok {
			if err := presize(b, i, s); err != nil {
				return fmt.Errorf("usage_records column %d: %w", i, err)
			}
		}
		if err := b.Column(i).Append(col); err != nil {
			return fmt.Errorf("usage_records column %d: %w", i, err)
		}
	}
	return nil
}

// presize makes the batch's string column i hold the bytes of vals
// before they go in. The driver appends a column's strings one by one to
// one buffer, which grows a quarter at a time past a few hundred bytes: a
// copy of the column so far at each step, the largest single item of the sink's
// own work per row. One blank value of the column's whole size, appended
// and taken back, leaves the buffer that large.
func presize(b driver.Batch, i int, vals []string) error {
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	if n < 4096 {
		return nil
	}
	col := b.Columns()[i]
	if col.Type() != "String" || col.Rows() != 0 {
		return nil // a column of another type (a later schema's), or not empty: its values go in as they come
	}
	if err := col.AppendRow(blank(n)); err != nil {
		return err
	}
	col.Reset()
	return nil
}

// blankBytes is a buffer of zeros, only ever read, grown as needed up to
// maxBlank; a larger column gets one of its own.
var blankBytes atomic.Pointer[[]byte]

const maxBlank = 8 << 20

func blank(n int) []byte {
	if p := blankBytes.Load(); p != nil && len(*p) >= n {
		return (*p)[:n]
	}
	if n > maxBlank {
		return make([]byte, n)
	}
	z := make([]byte, max(n, 1<<20))
	blankBytes.Store(&z)
	return z[:n]
}

const eventsInsert = `INSERT INTO card_events (partition, src_seq, idx, event_id, type, iccid, account_id, plan_id, time,
 reason, stop_reasons, status, cause, usage_bytes, quota_bytes, overshoot_bytes, cycle_start, cycle_end, record_bytes,
 detail, warning, expected_at, valid_until, amount_fen, balance_fen, operator, note, code, pool_id, imei, bound_imei, previous_imei, day_bytes, median_bytes)`

// eventKey parses an event id "<partition>-<src_seq>-<idx>".
func eventKey(id string) (rowKey, error) {
	parts := strings.Split(id, "-")
	if len(parts) != 3 {
		return rowKey{}, fmt.Errorf("event id %q is not <partition>-<seq>-<index>", id)
	}
	p, err1 := strconv.ParseUint(parts[0], 10, 16)
	s, err2 := strconv.ParseUint(parts[1], 10, 64)
	i, err3 := strconv.ParseUint(parts[2], 10, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return rowKey{}, fmt.Errorf("event id %q is not <partition>-<seq>-<index>", id)
	}
	return rowKey{uint16(p), s, uint32(i)}, nil
}

func parseTime(s string) time.Time {
	if s == "" {
		return time.Unix(0, 0)
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Unix(0, 0)
	}
	return t
}

func deref[T any](v *T) T {
	var zero T
	if v == nil {
		return zero
	}
	return *v
}

// appendEvent adds an event's row.
func appendEvent(b driver.Batch, k rowKey, e *event.Envelope) error {
	d := &e.Data
	var cs, ce string
	if d.Cycle != nil {
		cs, ce = d.Cycle.Start, d.Cycle.End
	}
	detail := d.Detail
	if d.Day != "" {
		detail = d.Day // an anomaly's day
	}
	reasons := []string{}
	if d.StopReasons != nil {
		reasons = *d.StopReasons
	}
	return b.Append(k.partition, k.seq, k.idx, e.ID, e.Type, d.ICCID, d.AccountID, d.PlanID, parseTime(e.Time),
		d.Reason, reasons, d.Status, d.Cause, deref(d.UsageBytes), deref(d.QuotaBytes), deref(d.OvershootBytes),
		parseTime(cs), parseTime(ce), d.RecordBytes, detail, d.Warning, parseTime(d.ExpectedAt), parseTime(d.ValidUntil),
		d.AmountFen, deref(d.BalanceFen), d.Operator, d.Note, d.Code, d.PoolID, d.IMEI, d.BoundIMEI, d.PreviousIMEI,
		deref(d.DayBytes), deref(d.MedianBytes))
}
