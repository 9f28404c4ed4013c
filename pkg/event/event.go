// Package event turns what the fold emits into the public contract: a
// CloudEvents 1.0 JSON envelope on a subject downstream services filter by.
package event

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/cardmeter/cardmeter/pkg/card"
)

// Source is the CloudEvents source of every event cardmeter emits.
const Source = "cardmeter/projector"

// Envelope is a CloudEvents 1.0 structured-mode event.
type Envelope struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	Subject         string `json:"subject"`
	Time            string `json:"time"`
	DataContentType string `json:"datacontenttype"`
	Data            Data   `json:"data"`
}

// Data is the payload; which fields are set depends on the type (see the
// JSON Schemas in schemas/events/).
type Data struct {
	ICCID          string         `json:"iccid,omitempty"`
	AccountID      string         `json:"account_id,omitempty"`
	PlanID         string         `json:"plan_id,omitempty"`
	Cause          string         `json:"cause"`
	Status         string         `json:"status,omitempty"`
	Reason         string         `json:"reason,omitempty"`
	StopReasons    *[]string      `json:"stop_reasons,omitempty"` // card events
	UsageBytes     *uint64        `json:"usage_bytes,omitempty"`  // card events
	QuotaBytes     *uint64        `json:"quota_bytes,omitempty"`
	OvershootBytes *uint64        `json:"overshoot_bytes,omitempty"`
	Cycle          *CycleRef      `json:"cycle,omitempty"`
	RecordBytes    uint64         `json:"record_bytes,omitempty"`
	Detail         string         `json:"detail,omitempty"`
	Warning        string         `json:"warning,omitempty"`
	ExpectedAt     string         `json:"expected_at,omitempty"`
	AmountFen      int64          `json:"amount_fen,omitempty"`
	BalanceFen     *int64         `json:"balance_fen,omitempty"`
	Operator       string         `json:"operator,omitempty"`
	Note           string         `json:"note,omitempty"`
	Code           string         `json:"code,omitempty"`
	ValidUntil     string         `json:"valid_until,omitempty"`
	PoolID         string         `json:"pool_id,omitempty"`
	Action         string         `json:"action,omitempty"`     // actuation events: stop, resume, cancel
	Carrier        string         `json:"carrier,omitempty"`    // actuation events
	WebhookID      string         `json:"webhook_id,omitempty"` // webhook events
	Drift          map[string]int `json:"drift,omitempty"`      // drift events: cards by kind
	Cards          []string       `json:"cards,omitempty"`      // drift events: the first drifted cards
	ActionsSent    *int64         `json:"actions_sent,omitempty"`
	IMEI           string         `json:"imei,omitempty"`          // device events: the device seen, or rebound to (14 digits)
	BoundIMEI      string         `json:"bound_imei,omitempty"`    // device events: the card's bound device before
	PreviousIMEI   string         `json:"previous_imei,omitempty"` // imei_changed: the device seen before this one
	Day            string         `json:"day,omitempty"`           // usage_anomaly: the day (YYYY-MM-DD, the plan's zone)
	DayBytes       *uint64        `json:"day_bytes,omitempty"`     // usage_anomaly: the day's bytes so far
	MedianBytes    *uint64        `json:"median_bytes,omitempty"`  // usage_anomaly: the median day of the 7 before
}

// CycleRef is a billing cycle in RFC 3339.
type CycleRef struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// Kind is the subject part of a type: "card.stopped" for card.stopped.v1.
func Kind(t card.EmittedType) string {
	s := string(t)
	if i := strings.LastIndex(s, ".v"); i > 0 {
		return s[:i]
	}
	return s
}

// Rfc3339 formats Unix seconds in UTC.
func Rfc3339(t int64) string { return time.Unix(t, 0).UTC().Format(time.RFC3339) }

// FromEmitted builds the envelope of an emitted event. id must be
// deterministic (the projector derives it from the log position), so that a
// replay publishes the same ids and JetStream drops the repeats.
func FromEmitted(e *card.Emitted, id string) Envelope {
	subject := e.ICCID
	if subject == "" {
		subject = e.AccountID
	}
	if e.Webhook != "" {
		subject = e.Webhook
	}
	if e.Type == card.EmitDriftDetected {
		subject = e.Carrier
	}
	d := Data{ICCID: e.ICCID, AccountID: e.AccountID, PlanID: e.PlanID, Cause: e.Cause, RecordBytes: e.Bytes, Detail: e.Detail}
	if isCardEvent(e.Type) {
		reasons := e.Reasons.Names()
		usage, quota, over := e.Usage, e.Quota, e.Overshoot
		d.StopReasons, d.UsageBytes, d.QuotaBytes, d.OvershootBytes = &reasons, &usage, &quota, &over
	}
	if e.Reason != 0 {
		d.Reason = e.Reason.String()
	}
	if isCardEvent(e.Type) {
		d.Status = string(card.InService)
		if e.Reasons != 0 {
			d.Status = string(card.Stopped)
		}
		if e.Type == card.EmitCancelled || e.Cancelled {
			d.Status = string(card.Cancelled)
		}
	}
	d.Warning, d.AmountFen, d.Operator, d.Note, d.Code, d.PoolID = e.Warning, e.Amount, e.Operator, e.Note, e.Code, e.Pool
	d.Carrier, d.WebhookID = e.Carrier, e.Webhook
	d.IMEI, d.BoundIMEI, d.PreviousIMEI = e.IMEI, e.BoundIMEI, e.PreviousIMEI
	if e.Type == card.EmitUsageAnomaly {
		dayBytes, median := e.DayBytes, e.Median
		d.Day, d.DayBytes, d.MedianBytes, d.Detail = e.Detail, &dayBytes, &median, ""
	}
	if e.Type == card.EmitDriftDetected {
		sent := e.Amount
		d.Drift, d.Cards, d.ActionsSent, d.AmountFen = e.Drift, e.Cards, &sent, 0
	}
	if e.Type == card.EmitActuationSucceeded || e.Type == card.EmitActuationFailed || e.Type == card.EmitResyncRequested {
		// the action asked of the carrier; the card's status and stop
		// reasons as cardmeter has them, not its usage
		d.Action, d.Code = e.Code, ""
		d.UsageBytes, d.QuotaBytes, d.OvershootBytes = nil, nil, nil
	}
	if e.Expected != 0 {
		d.ExpectedAt = Rfc3339(e.Expected)
	}
	if e.Until != 0 {
		d.ValidUntil = Rfc3339(e.Until)
	}
	if strings.HasPrefix(string(e.Type), "account.") {
		b := e.Balance
		d.BalanceFen = &b
	}
	if e.Cycle.End != 0 {
		d.Cycle = &CycleRef{Start: Rfc3339(e.Cycle.Start), End: Rfc3339(e.Cycle.End)}
	}
	return Envelope{
		SpecVersion: "1.0", ID: id, Source: Source, Type: "cardmeter." + string(e.Type),
		Subject: subject, Time: Rfc3339(e.At), DataContentType: "application/json", Data: d,
	}
}

// isCardEvent: the event is about a card's state (card.* and usage.*), and
// carries its status, stop reasons and usage.
func isCardEvent(t card.EmittedType) bool {
	return strings.HasPrefix(string(t), "card.") || strings.HasPrefix(string(t), "usage.")
}

// Marshal encodes an envelope.
func (e *Envelope) Marshal() ([]byte, error) { return json.Marshal(e) }

// SubjectKind is Kind of the envelope's type, without the "cardmeter." prefix.
func (e *Envelope) SubjectKind() string {
	return Kind(card.EmittedType(strings.TrimPrefix(e.Type, "cardmeter.")))
}
