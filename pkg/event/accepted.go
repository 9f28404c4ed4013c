package event

import (
	"encoding/json"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
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

// Marshal encodes the message.
func (a *Accepted) Marshal() ([]byte, error) { return json.Marshal(a) }

// UnmarshalAccepted decodes the message.
func UnmarshalAccepted(b []byte) (*Accepted, error) {
	var a Accepted
	err := json.Unmarshal(b, &a)
	return &a, err
}
