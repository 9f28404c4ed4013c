package card

import (
	"errors"
	"fmt"
)

// Input is one event of the log other than usage (which travels in binary
// chunks, see cdr.AppendChunk): a plan change, a provisioning, a clock tick.
// The ingest API stamps At with the log's current time when it writes.
type Input struct {
	Type InputType        `json:"type"`
	ID   string           `json:"id"`
	At   int64            `json:"at"`
	Plan *PlanChanged     `json:"plan,omitempty"`
	Card *CardProvisioned `json:"card,omitempty"`
}

// InputType names an input event. Names are past tense and versioned.
type InputType string

const (
	// TypePlanChanged creates or changes a plan; it is written to every
	// partition, since every account may use any plan.
	TypePlanChanged InputType = "plan.changed.v1"
	// TypeCardProvisioned creates or changes a card.
	TypeCardProvisioned InputType = "card.provisioned.v1"
	// TypeClockTicked moves the log's time forward; written to every partition.
	TypeClockTicked InputType = "clock.ticked.v1"
)

// PlanChanged is a plan (套餐) as of a change.
type PlanChanged struct {
	PlanID          string `json:"plan_id"`
	QuotaBytes      uint64 `json:"quota_bytes"`
	MonthlyFeeFen   int64  `json:"monthly_fee_fen"`
	OverageFenPerMB int64  `json:"overage_fen_per_mb"`
	TermMonths      int    `json:"term_months"`
	TimeZone        string `json:"time_zone"`
	CycleAnchorDay  int    `json:"cycle_anchor_day"`
	WarningPct      []int  `json:"warning_thresholds_pct,omitempty"`
}

// Validate checks a plan before it is written to the log.
func (p *PlanChanged) Validate() error {
	if p.PlanID == "" {
		return &InvalidError{Field: "plan_id", Reason: "required"}
	}
	if p.CycleAnchorDay < 0 || p.CycleAnchorDay > 31 {
		return &InvalidError{Field: "cycle_anchor_day", Reason: "must be 1 to 31"}
	}
	if p.MonthlyFeeFen < 0 {
		return &InvalidError{Field: "monthly_fee_fen", Reason: "must be ≥ 0"}
	}
	if p.OverageFenPerMB < 0 {
		return &InvalidError{Field: "overage_fen_per_mb", Reason: "must be ≥ 0"}
	}
	if p.TermMonths < 0 {
		return &InvalidError{Field: "term_months", Reason: "must be ≥ 0"}
	}
	for _, w := range p.WarningPct {
		if w <= 0 || w > 1000 {
			return &InvalidError{Field: "warning_thresholds_pct", Reason: "each must be 1 to 1000"}
		}
	}
	if _, err := Zone(p.TimeZone); err != nil {
		return &InvalidError{Field: "time_zone", Reason: "unknown time zone " + fmt.Sprintf("%q", p.TimeZone)}
	}
	return nil
}

// CardProvisioned opens a card or changes its plan or options.
type CardProvisioned struct {
	ICCID             string `json:"iccid"`
	AccountID         string `json:"account_id"`
	PlanID            string `json:"plan_id"`
	Carrier           string `json:"carrier"`
	IMSI              string `json:"imsi,omitempty"`
	MSISDN            string `json:"msisdn,omitempty"`
	AutoStopOverQuota bool   `json:"auto_stop_over_quota"`
	PoolID            string `json:"pool_id,omitempty"`
	ValidFrom         int64  `json:"valid_from,omitempty"`
	ValidUntil        int64  `json:"valid_until,omitempty"`
}

// InvalidError is an input that breaks a rule of its own shape.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Reason }

// ErrUnknownInput is returned by Apply for an input type this version does
// not know. The shell must stop rather than skip it: skipping would fold a
// different history than the log holds.
var ErrUnknownInput = errors.New("unknown input event type")

// EmittedType names an event the fold emits. The public CloudEvents type is
// "cardmeter." + the name.
type EmittedType string

const (
	// EmitStopped: a stop reason was raised. Data.Reasons holds all of them.
	EmitStopped EmittedType = "card.stopped.v1"
	// EmitResumed: the last stop reason was cleared; the card is in service.
	EmitResumed EmittedType = "card.resumed.v1"
	// EmitStopCleared: a stop reason was cleared but others remain.
	EmitStopCleared EmittedType = "card.stop_cleared.v1"
	// EmitProvisioned: a card was opened or changed.
	EmitProvisioned EmittedType = "card.provisioned.v1"
	// EmitCycleClosed: a card's billing cycle ended, with its usage.
	EmitCycleClosed EmittedType = "card.cycle_closed.v1"
	// EmitUsageConflict: a record id came again with different content.
	EmitUsageConflict EmittedType = "usage.conflict.v1"
	// EmitUsageAdjusted: a record arrived for a closed cycle; it counts in
	// that cycle and stops nothing now.
	EmitUsageAdjusted EmittedType = "usage.adjusted.v1"
	// EmitInputRefused: an input event broke a rule and was not applied.
	EmitInputRefused EmittedType = "input.refused.v1"
)

// Emitted is an event the fold emits. It is flat, so the fold fills it
// without allocating; the shell turns it into a CloudEvent by Type.
type Emitted struct {
	Type      EmittedType
	ICCID     string
	AccountID string
	At        int64  // the log time of the event that caused it
	Cause     string // "record:<carrier>/<record_id>", "event:<id>" or "tick:<at>"
	Reason    Reason // the reason raised or cleared
	Reasons   Reasons
	Usage     uint64
	Quota     uint64
	Overshoot uint64
	Cycle     Cycle
	Bytes     uint64 // a record's bytes (adjustments, conflicts)
	Detail    string // refusals: why
}
