package card

import (
	"errors"
	"fmt"
)

// Input is one event of the log other than usage (which travels in binary
// chunks, see cdr.AppendChunk): a plan change, a provisioning, a clock tick.
// The ingest API stamps At with the log's current time when it writes.
type Input struct {
	Type    InputType        `json:"type"`
	ID      string           `json:"id"`
	At      int64            `json:"at"`
	Plan    *PlanChanged     `json:"plan,omitempty"`
	Card    *CardProvisioned `json:"card,omitempty"`
	Account *AccountChanged  `json:"account,omitempty"`
	Payment *Payment         `json:"payment,omitempty"`
	Charge  *Charge          `json:"charge,omitempty"`
	Pool    *PoolChanged     `json:"pool,omitempty"`
	Renewal *Renewal         `json:"renewal,omitempty"`
	Command *ManualCommand   `json:"command,omitempty"`
	// outcomes the pipeline's own roles report back into the log
	Actuation *ActuationReport `json:"actuation,omitempty"`
	Webhook   *WebhookNotice   `json:"webhook,omitempty"`
	Drift     *DriftReport     `json:"drift,omitempty"`
	Resync    *ResyncRequest   `json:"resync,omitempty"`
	Rebind    *Rebind          `json:"rebind,omitempty"`
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
	// TypeAccountChanged creates or changes an account's settings.
	TypeAccountChanged InputType = "account.changed.v1"
	// TypePaymentReceived credits an account (充值).
	TypePaymentReceived InputType = "payment.received.v1"
	// TypeChargeRequested debits an account for a charge billing decided.
	TypeChargeRequested InputType = "charge.requested.v1"
	// TypePoolChanged creates or changes a data pool (流量池).
	TypePoolChanged InputType = "pool.changed.v1"
	// TypeCardRenewed extends a card's validity (续费).
	TypeCardRenewed InputType = "card.renewed.v1"
	// TypeStopRequested is an operator's manual stop (人工停用).
	TypeStopRequested InputType = "card.stop_requested.v1"
	// TypeResumeRequested is an operator's manual resume (人工复机).
	TypeResumeRequested InputType = "card.resume_requested.v1"
	// TypeActuationReported is what the card's carrier answered to an
	// action the actuator sent it (a stop, resume or cancellation).
	TypeActuationReported InputType = "card.actuation_reported.v1"
	// TypeWebhookDisabled is the notifier's word that it disabled a
	// webhook whose endpoint failed every attempt for too long.
	TypeWebhookDisabled InputType = "webhook.disabled.v1"
	// TypeDriftReported is a reconciliation's finding: how a carrier's
	// cards differ from cardmeter's.
	TypeDriftReported InputType = "carrier.drift_reported.v1"
	// TypeResyncRequested asks that the card's carrier be told the card's
	// state again (a reconciliation found them apart): the fold emits
	// card.resync_requested.v1 with the action that state needs, at its
	// place in the card's history, for the actuator to send in order.
	TypeResyncRequested InputType = "card.resync_requested.v1"
	// TypeRebindRequested is an operator's binding of a card to another
	// device (机卡重新绑定).
	TypeRebindRequested InputType = "card.rebind_requested.v1"
)

// ResyncRequest asks for a card's state to be sent to its carrier again.
type ResyncRequest struct {
	ICCID  string `json:"iccid"`
	Reason string `json:"reason"` // why, e.g. "reconcile: active_at_carrier"
	By     string `json:"by"`     // who asked: an operator, or the actuator
}

// ActuationReport is the outcome of an action sent to a card's carrier.
type ActuationReport struct {
	ICCID    string `json:"iccid"`
	Action   string `json:"action"` // stop, resume, cancel
	Carrier  string `json:"carrier"`
	OK       bool   `json:"ok"`
	Cause    string `json:"cause"`            // the event acted on: "event:<id>"
	Detail   string `json:"detail,omitempty"` // the carrier's answer, or why it failed
	Attempts int    `json:"attempts,omitempty"`
}

// DriftReport is how a carrier's cards differ from cardmeter's, by kind,
// with the first cards of each, and how many actions were sent to mend it.
type DriftReport struct {
	Carrier string         `json:"carrier"`
	Counts  map[string]int `json:"counts"`
	Cards   []string       `json:"cards,omitempty"`
	Sent    int            `json:"sent"`
}

// WebhookNotice is a webhook the notifier disabled, and why.
type WebhookNotice struct {
	WebhookID string `json:"webhook_id"`
	Reason    string `json:"reason"`
}

// AccountChanged sets an account's options.
type AccountChanged struct {
	AccountID           string `json:"account_id"`
	CreditLimitFen      int64  `json:"credit_limit_fen"`
	LowBalanceFen       int64  `json:"low_balance_fen"`
	AutoResumeOnPayment bool   `json:"auto_resume_on_payment"`
}

// Payment is money received for an account, in fen.
type Payment struct {
	AccountID string `json:"account_id"`
	PaymentID string `json:"payment_id"`
	AmountFen int64  `json:"amount_fen"`
	PaidAt    int64  `json:"paid_at,omitempty"`
}

// Charge is money billing takes from an account, in fen.
type Charge struct {
	AccountID string `json:"account_id"`
	ChargeID  string `json:"charge_id"`
	AmountFen int64  `json:"amount_fen"`
	Reason    string `json:"reason,omitempty"`
}

// PoolChanged is a data pool shared by cards of one account.
type PoolChanged struct {
	PoolID         string `json:"pool_id"`
	AccountID      string `json:"account_id"`
	QuotaBytes     uint64 `json:"quota_bytes"`
	TimeZone       string `json:"time_zone,omitempty"`
	CycleAnchorDay int    `json:"cycle_anchor_day,omitempty"`
}

// Renewal extends a card's validity to ValidUntil, or by Months from the
// later of its current end and the renewal's time.
type Renewal struct {
	ICCID      string `json:"iccid"`
	RenewalID  string `json:"renewal_id"`
	ValidUntil int64  `json:"valid_until,omitempty"`
	Months     int    `json:"months,omitempty"`
}

// Rebind is an operator's binding of a card to another device (IMEI):
// who and why.
type Rebind struct {
	ICCID    string `json:"iccid"`
	IMEI     string `json:"imei"`
	Operator string `json:"operator"`
	Note     string `json:"note,omitempty"`
}

// ManualCommand is an operator's stop or resume request: who and why.
type ManualCommand struct {
	ICCID    string `json:"iccid"`
	Operator string `json:"operator"`
	Note     string `json:"note,omitempty"`
}

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
	// BindIMEI "first_seen" binds each card of the plan to the first
	// device its usage shows; StopOnIMEIChange stops a card used in
	// another device than its bound one (device.go).
	BindIMEI         string `json:"bind_imei,omitempty"`
	StopOnIMEIChange bool   `json:"stop_on_imei_change,omitempty"`
	// AnomalyMinBytes and AnomalyFactor judge a card's day (0: 50 MiB and
	// 5); StopOnAnomaly stops a card whose day is an anomaly (anomaly.go).
	AnomalyMinBytes uint64  `json:"anomaly_min_bytes,omitempty"`
	AnomalyFactor   float64 `json:"anomaly_factor,omitempty"`
	StopOnAnomaly   bool    `json:"stop_on_anomaly,omitempty"`
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
	if p.BindIMEI != "" && p.BindIMEI != BindFirstSeen {
		return &InvalidError{Field: "bind_imei", Reason: `must be "first_seen" or absent`}
	}
	if p.AnomalyFactor != 0 && !(p.AnomalyFactor >= 1 && p.AnomalyFactor <= 1000) {
		return &InvalidError{Field: "anomaly_factor", Reason: "must be 1 to 1000"}
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
	// IMEI binds the card to a device; BindIMEI "first_seen" binds it to
	// the first its usage shows; StopOnIMEIChange stops it when used in
	// another (device.go). Each option is on when the card or its plan
	// says so.
	IMEI             string `json:"imei,omitempty"`
	BindIMEI         string `json:"bind_imei,omitempty"`
	StopOnIMEIChange bool   `json:"stop_on_imei_change,omitempty"`
	// StopOnAnomaly stops the card on a day of anomalous usage (or its
	// plan says so; anomaly.go).
	StopOnAnomaly bool `json:"stop_on_anomaly,omitempty"`
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
	// EmitCancelled: the card is cancelled (销户), finally.
	EmitCancelled EmittedType = "card.cancelled.v1"
	// EmitRenewed: the card's validity was extended.
	EmitRenewed EmittedType = "card.renewed.v1"
	// EmitWarning: a card warning fired (Warning names it).
	EmitWarning EmittedType = "card.warning.v1"
	// EmitWarningResolved: a card warning's condition went away.
	EmitWarningResolved EmittedType = "card.warning_resolved.v1"
	// EmitCommandRefused: a manual stop or resume was refused (Code says why).
	EmitCommandRefused EmittedType = "card.command_refused.v1"
	// EmitCharged: money was taken from an account (Detail: the reason).
	EmitCharged EmittedType = "account.charged.v1"
	// EmitPaymentReceived: money was credited to an account.
	EmitPaymentReceived EmittedType = "account.payment_received.v1"
	// EmitArrearsEntered: the balance fell below the credit limit.
	EmitArrearsEntered EmittedType = "account.arrears_entered.v1"
	// EmitArrearsCleared: a payment brought the balance back to zero or above.
	EmitArrearsCleared EmittedType = "account.arrears_cleared.v1"
	// EmitAccountWarning: an account warning fired (low balance).
	EmitAccountWarning EmittedType = "account.warning.v1"
	// EmitAccountWarningResolved: an account warning's condition went away.
	EmitAccountWarningResolved EmittedType = "account.warning_resolved.v1"
	// EmitActuationSucceeded: the card's carrier did what it was asked.
	EmitActuationSucceeded EmittedType = "card.actuation_succeeded.v1"
	// EmitActuationFailed: the card's carrier did not (after retries).
	EmitActuationFailed EmittedType = "card.actuation_failed.v1"
	// EmitWebhookDisabled: a webhook was disabled (subject: its id).
	EmitWebhookDisabled EmittedType = "webhook.disabled.v1"
	// EmitDriftDetected: a carrier's cards differ from cardmeter's
	// (subject: the carrier).
	EmitDriftDetected EmittedType = "carrier.drift_detected.v1"
	// EmitResyncRequested: the card's state is to be sent to its carrier
	// again; its action (stop, resume, cancel) is what the state needs.
	EmitResyncRequested EmittedType = "card.resync_requested.v1"
	// EmitIMEIChanged: the card's counted usage shows a device other than
	// its bound one (once per new device; device.go).
	EmitIMEIChanged EmittedType = "card.imei_changed.v1"
	// EmitRebound: an operator bound the card to another device.
	EmitRebound EmittedType = "card.rebound.v1"
	// EmitUsageAnomaly: a card's day of usage is far above its usual
	// (once per day; anomaly.go).
	EmitUsageAnomaly EmittedType = "card.usage_anomaly.v1"
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
	Bytes     uint64         // a record's bytes (adjustments, conflicts)
	Detail    string         // refusals: why; charges: the reason
	Code      string         // command refusals: the typed reason, e.g. "in-arrears"
	Warning   string         // warnings: which, e.g. "usage_80", "expiry_7d", "forecast", "low_balance"
	Amount    int64          // charges and payments, fen
	Balance   int64          // the account's balance after, fen
	Expected  int64          // forecast: when the quota is expected to run out
	Operator  string         // manual commands: who asked
	Note      string         // manual commands: why
	Until     int64          // renewals, expiry: the validity end
	Pool      string         // pool stops: the pool
	PlanID    string         // card events and a card's charges: the card's plan
	Webhook   string         // webhook events: the webhook's id (their subject)
	Carrier   string         // actuation and drift events: the carrier
	Drift     map[string]int // drift events: cards by kind
	Cards     []string       // drift events: the first drifted cards
	Cancelled bool           // actuation and resync events: the card is cancelled
	// device events: the device seen (or rebound to), the bound one, the
	// one seen before (14 digits each)
	IMEI, BoundIMEI, PreviousIMEI string
	// anomalies: the day's bytes so far and the median of the 7 days
	// before it (Detail: the day, YYYY-MM-DD)
	DayBytes, Median uint64
}
