package event

import (
	"encoding/binary"
	"errors"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/wire"
)

// Accepted is the usage of one input chunk that the projector counted (in
// the current cycle or, late, in a closed one), for the sink. Duplicates and
// conflicts are not in it, so ClickHouse sums what the cards count.
type Accepted struct {
	Partition  int           `json:"partition"`
	Seq        uint64        `json:"seq"` // METER sequence of the input chunk
	Carrier    string        `json:"carrier"`
	ReceivedAt int64         `json:"received_at"`
	Rows       []AcceptedRow `json:"rows"`
}

// AcceptedRow is one counted record.
type AcceptedRow struct {
	Index      int    `json:"i"` // the record's index in its chunk
	RecordID   string `json:"record_id"`
	ICCID      string `json:"iccid"`
	AccountID  string `json:"account_id"`
	PlanID     string `json:"plan_id"`
	Start      int64  `json:"start"`
	End        int64  `json:"end"`
	BytesUp    uint64 `json:"bytes_up"`
	BytesDown  uint64 `json:"bytes_down"`
	Sequence   uint32 `json:"sequence,omitempty"`
	SessionID  string `json:"session_id,omitempty"`
	APN        string `json:"apn,omitempty"`
	RAT        string `json:"rat,omitempty"`
	IMEI       string `json:"imei,omitempty"`
	CellID     string `json:"cell_id,omitempty"`
	CycleStart int64  `json:"cycle_start"`
	Late       bool   `json:"late,omitempty"`
}

// AppendRow adds a record with its verdict when the verdict counts it.
func (a *Accepted) AppendRow(i int, r *cdr.Record, v *card.Verdict) {
	if !v.Status.Counts() {
		return
	}
	a.Rows = append(a.Rows, AcceptedRow{
		Index: i, RecordID: r.RecordID, ICCID: r.ICCID, AccountID: v.AccountID, PlanID: v.PlanID,
		Start: r.Start, End: r.End, BytesUp: r.BytesUp, BytesDown: r.BytesDown, Sequence: r.Sequence,
		SessionID: r.SessionID, APN: r.APN, RAT: r.RAT, IMEI: r.IMEI, CellID: r.CellID,
		CycleStart: v.CycleStart, Late: v.Status == card.Late,
	})
}

// The message is binary, as it is on the hot path twice (the projector
// writes it, the sink reads it; JSON here cost the sink a third of the
// pipeline's CPU):
//
//	version byte (1), uvarint partition, uvarint seq, string carrier,
//	varint received_at, uvarint rows, then per row: uvarint index,
//	9 strings (record_id iccid account_id plan_id session_id apn rat imei
//	cell_id), varint start, varint end-start, uvarint up, uvarint down,
//	uvarint sequence, varint cycle_start, byte late.
//
// Strings are a uvarint length and the bytes (package wire).
const acceptedVersion = 1

// ErrCorruptAccepted is returned for bytes that are not an accepted message.
var ErrCorruptAccepted = errors.New("corrupt accepted-usage message")

// Marshal encodes the message.
func (a *Accepted) Marshal() ([]byte, error) {
	b := make([]byte, 0, 64+len(a.Rows)*96)
	b = append(b, acceptedVersion)
	b = binary.AppendUvarint(b, uint64(a.Partition))
	b = binary.AppendUvarint(b, a.Seq)
	b = wire.AppendString(b, a.Carrier)
	b = binary.AppendVarint(b, a.ReceivedAt)
	b = binary.AppendUvarint(b, uint64(len(a.Rows)))
	for i := range a.Rows {
		r := &a.Rows[i]
		b = binary.AppendUvarint(b, uint64(r.Index))
		for _, s := range [...]string{r.RecordID, r.ICCID, r.AccountID, r.PlanID, r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID} {
			b = wire.AppendString(b, s)
		}
		b = binary.AppendVarint(b, r.Start)
		b = binary.AppendVarint(b, r.End-r.Start)
		b = binary.AppendUvarint(b, r.BytesUp)
		b = binary.AppendUvarint(b, r.BytesDown)
		b = binary.AppendUvarint(b, uint64(r.Sequence))
		b = binary.AppendVarint(b, r.CycleStart)
		late := byte(0)
		if r.Late {
			late = 1
		}
		b = append(b, late)
	}
	return b, nil
}

// UnmarshalAccepted decodes the message.
func UnmarshalAccepted(b []byte) (*Accepted, error) { return unmarshalAccepted(b, false) }

// UnmarshalAcceptedView decodes the message without copying its strings:
// they share b's memory, so b must not change while the result is in use
// (the sink reads a message, inserts it and drops both).
func UnmarshalAcceptedView(b []byte) (*Accepted, error) { return unmarshalAccepted(b, true) }

func unmarshalAccepted(b []byte, alias bool) (*Accepted, error) {
	if len(b) == 0 || b[0] != acceptedVersion {
		return nil, ErrCorruptAccepted
	}
	r := &wire.Reader{B: b[1:], Alias: alias}
	a := &Accepted{Partition: int(r.Uvarint()), Seq: r.Uvarint(), Carrier: r.String(), ReceivedAt: r.Varint()}
	n := r.Uvarint()
	if r.Err == nil && n > uint64(len(r.B)/16) {
		return nil, ErrCorruptAccepted
	}
	a.Rows = make([]AcceptedRow, 0, n)
	for i := uint64(0); i < n && r.Err == nil; i++ {
		var row AcceptedRow
		row.Index = int(r.Uvarint())
		row.RecordID, row.ICCID, row.AccountID, row.PlanID = r.String(), r.String(), r.String(), r.String()
		row.SessionID, row.APN, row.RAT, row.IMEI, row.CellID = r.String(), r.String(), r.String(), r.String(), r.String()
		row.Start = r.Varint()
		row.End = row.Start + r.Varint()
		row.BytesUp, row.BytesDown = r.Uvarint(), r.Uvarint()
		row.Sequence = uint32(r.Uvarint())
		row.CycleStart = r.Varint()
		row.Late = r.Byte() == 1
		a.Rows = append(a.Rows, row)
	}
	if r.Err != nil || len(r.B) != 0 {
		return nil, ErrCorruptAccepted
	}
	return a, nil
}
