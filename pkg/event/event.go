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
	ICCID          string    `json:"iccid,omitempty"`
	AccountID      string    `json:"account_id,omitempty"`
	Cause          string    `json:"cause"`
	Status         string    `json:"status,omitempty"`
	Reason         string    `json:"reason,omitempty"`
	StopReasons    []string  `json:"stop_reasons"`
	UsageBytes     uint64    `json:"usage_bytes"`
	QuotaBytes     uint64    `json:"quota_bytes"`
	OvershootBytes uint64    `json:"overshoot_bytes"`
	Cycle          *CycleRef `json:"cycle,omitempty"`
	RecordBytes    uint64    `json:"record_bytes,omitempty"`
	Detail         string    `json:"detail,omitempty"`
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
	d := Data{
		ICCID: e.ICCID, AccountID: e.AccountID, Cause: e.Cause,
		StopReasons: e.Reasons.Names(), UsageBytes: e.Usage, QuotaBytes: e.Quota,
		OvershootBytes: e.Overshoot, RecordBytes: e.Bytes, Detail: e.Detail,
	}
	if e.Reason != 0 {
		d.Reason = e.Reason.String()
	}
	if e.ICCID != "" {
		d.Status = string(card.InService)
		if e.Reasons != 0 {
			d.Status = string(card.Stopped)
		}
	}
	if e.Cycle.End != 0 {
		d.Cycle = &CycleRef{Start: Rfc3339(e.Cycle.Start), End: Rfc3339(e.Cycle.End)}
	}
	return Envelope{
		SpecVersion: "1.0", ID: id, Source: Source, Type: "cardmeter." + string(e.Type),
		Subject: subject, Time: Rfc3339(e.At), DataContentType: "application/json", Data: d,
	}
}

// Marshal encodes an envelope.
func (e *Envelope) Marshal() ([]byte, error) { return json.Marshal(e) }

// SubjectKind is Kind of the envelope's type, without the "cardmeter." prefix.
func (e *Envelope) SubjectKind() string {
	return Kind(card.EmittedType(strings.TrimPrefix(e.Type, "cardmeter.")))
}
