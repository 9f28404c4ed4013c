package sink

import (
	"fmt"
	"strconv"
	"strings"
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

// appendUsage adds the rows of an accepted chunk whose keys skip does not hold.
func appendUsage(b driver.Batch, a *event.Accepted, skip map[rowKey]bool) (int, error) {
	recv := time.Unix(a.ReceivedAt, 0)
	n := 0
	for _, r := range a.Rows {
		if skip[rowKey{uint16(a.Partition), a.Seq, uint32(r.Index)}] {
			continue
		}
		late := uint8(0)
		if r.Late {
			late = 1
		}
		if err := b.Append(uint16(a.Partition), a.Seq, uint32(r.Index), a.Carrier, r.RecordID, r.ICCID, r.AccountID, r.PlanID,
			time.Unix(r.Start, 0), time.Unix(r.End, 0), r.BytesUp, r.BytesDown, r.Sequence, r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID,
			time.Unix(r.CycleStart, 0), late, recv, a.ReceivedAt-r.End); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

const eventsInsert = `INSERT INTO card_events (partition, src_seq, idx, event_id, type, iccid, account_id, plan_id, time,
 reason, stop_reasons, status, cause, usage_bytes, quota_bytes, overshoot_bytes, cycle_start, cycle_end, record_bytes,
 detail, warning, expected_at, valid_until, amount_fen, balance_fen, operator, note, code, pool_id)`

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
	reasons := []string{}
	if d.StopReasons != nil {
		reasons = *d.StopReasons
	}
	return b.Append(k.partition, k.seq, k.idx, e.ID, e.Type, d.ICCID, d.AccountID, d.PlanID, parseTime(e.Time),
		d.Reason, reasons, d.Status, d.Cause, deref(d.UsageBytes), deref(d.QuotaBytes), deref(d.OvershootBytes),
		parseTime(cs), parseTime(ce), d.RecordBytes, d.Detail, d.Warning, parseTime(d.ExpectedAt), parseTime(d.ValidUntil),
		d.AmountFen, deref(d.BalanceFen), d.Operator, d.Note, d.Code, d.PoolID)
}
