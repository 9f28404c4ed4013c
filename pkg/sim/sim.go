// Package sim answers what-if questions about plans: it replays the log
// of one account (or some of its cards) through the same fold as the
// projector twice, once as it was and once with the plan changed, in
// isolation (nothing is published, no state is touched), and compares
// what each fold counted, charged and stopped over a period.
//
// The account's history is all of it: its cards' usage, its payments and
// charges, the operators' commands, every plan change and clock tick of
// its partition. Other accounts' inputs and records change nothing of it
// (the fold keeps accounts apart), so they are left out.
package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// Request is a what-if: whose cards, over which period, with which plan.
type Request struct {
	AccountID string   `json:"account_id"`
	Cards     []string `json:"cards,omitempty"` // only these cards of the account; none: all of them
	From      string   `json:"from"`            // RFC 3339: the period's start (a cycle's start)
	To        string   `json:"to"`              // RFC 3339: its end (a cycle's start, exclusive)
	Plan      Override `json:"plan"`
}

// Override is the plan the simulated cards are on: another plan of the log
// (PlanID), and/or the fields that differ from their plan.
type Override struct {
	PlanID            string  `json:"plan_id,omitempty"`
	QuotaBytes        *uint64 `json:"quota_bytes,omitempty"`
	MonthlyFeeFen     *int64  `json:"monthly_fee_fen,omitempty"`
	OverageFenPerMB   *int64  `json:"overage_fen_per_mb,omitempty"`
	AutoStopOverQuota *bool   `json:"auto_stop_over_quota,omitempty"`
	PoolID            *string `json:"pool_id,omitempty"` // "" takes the cards out of their pool
}

// Outcome is what one fold did to a card (or to them all) in the period.
type Outcome struct {
	UsageBytes    uint64 `json:"usage_bytes"` // counted in the cycles that start in the period
	MonthlyFeeFen int64  `json:"monthly_fee_fen"`
	OverageFen    int64  `json:"overage_fen"` // overage and its late adjustments
	KeepNumberFen int64  `json:"keep_number_fee_fen"`
	OtherFen      int64  `json:"other_charges_fen"` // charges of the account not of a card
	TotalFen      int64  `json:"total_fen"`
	// Stops are a card's stops in the period; a total counts them by
	// reason instead (StopsByReason)
	Stops         []Stop         `json:"stops,omitempty"`
	StopsByReason map[string]int `json:"stops_by_reason,omitempty"`
}

// Stop is a stop reason raised, and when it cleared (if in the period).
type Stop struct {
	ICCID     string `json:"iccid,omitempty"`
	Reason    string `json:"reason"`
	At        string `json:"at"`
	Cause     string `json:"cause"`
	ClearedAt string `json:"cleared_at,omitempty"`
}

// CardResult compares a card's period as it was and as simulated.
type CardResult struct {
	ICCID     string  `json:"iccid"`
	PlanID    string  `json:"plan_id"`           // its plan as it was (at the end of the log)
	SimPlanID string  `json:"simulated_plan_id"` // the plan it was simulated on
	Actual    Outcome `json:"actual"`
	Simulated Outcome `json:"simulated"`
}

// Result is a simulation's answer.
type Result struct {
	Request Request      `json:"request"`
	Cards   []CardResult `json:"cards"`
	// CardsTruncated: how many cards are left out of Cards (a job lists
	// the MaxCards that differ most; the totals count every card)
	CardsTruncated int     `json:"cards_truncated,omitempty"`
	Actual         Outcome `json:"actual"`    // the cards together, and the account's other charges
	Simulated      Outcome `json:"simulated"` // the same, simulated
	SavingsFen     int64   `json:"savings_fen"`
	Messages       int     `json:"log_messages"` // log messages read
	LogTime        string  `json:"log_time"`     // the log's time at the end of the replay
}

// Errors of a request.
var (
	ErrInvalid = errors.New("invalid simulation")
	// ErrTooBig: the account has more cards than a simulation folds
	// (MaxAccountCards), in the projector's memory.
	ErrTooBig = errors.New("too many cards")
)

// Bounds of a simulation: the cards a request may list, and the cards of
// the account it folds (twice, with every record id of their retained
// cycles in memory: about 3 KiB a card for a month of a record every 6
// hours, in the projector's process).
const (
	MaxListedCards  = 10000
	MaxAccountCards = 50000
)

// SimPlanPrefix names the plans a simulation derives from the log's: a
// plan with the override's fields is "sim~<plan>".
const SimPlanPrefix = "sim~"

// Simulator replays one account's log twice. Feed it the partition's log
// messages in order with Apply, then read Result.
type Simulator struct {
	req      Request
	from, to int64
	only     map[string]bool // the cards asked for (and simulated on the plan); nil: the account's
	mine     map[string]bool // the account's cards seen so far (all folded: they share its money)
	err      error           // the simulated fold could not take what the log's did
	actual   *fold
	sim      *fold
	messages int
	recs     []cdr.Record // a chunk's, reused
}

// fold is one of the two replays and what it noticed in the period.
type fold struct {
	lastRefusal string
	p           *card.Partition
	verdicts    []card.Verdict
	out         []card.Emitted
	cards       map[string]*Outcome
	other       Outcome
	open        map[string]int // card+reason -> index of its open stop in its outcome
}

// New checks a request and starts a simulation.
func New(req Request) (*Simulator, error) {
	if req.AccountID == "" {
		return nil, fmt.Errorf("%w: account_id: required", ErrInvalid)
	}
	from, err := time.Parse(time.RFC3339, req.From)
	if err != nil {
		return nil, fmt.Errorf("%w: from: not an RFC 3339 time", ErrInvalid)
	}
	to, err := time.Parse(time.RFC3339, req.To)
	if err != nil {
		return nil, fmt.Errorf("%w: to: not an RFC 3339 time", ErrInvalid)
	}
	if !to.After(from) {
		return nil, fmt.Errorf("%w: to: must be after from", ErrInvalid)
	}
	if to.Sub(from) > 400*24*time.Hour {
		return nil, fmt.Errorf("%w: to: a period of at most 400 days", ErrInvalid)
	}
	if len(req.Cards) > MaxListedCards {
		return nil, fmt.Errorf("%w: cards: at most %d", ErrInvalid, MaxListedCards)
	}
	o := req.Plan
	for _, f := range []struct {
		name string
		v    *int64
	}{{"plan.monthly_fee_fen", o.MonthlyFeeFen}, {"plan.overage_fen_per_mb", o.OverageFenPerMB}} {
		if f.v != nil && *f.v < 0 {
			return nil, fmt.Errorf("%w: %s: must be ≥ 0", ErrInvalid, f.name)
		}
	}
	s := &Simulator{req: req, from: from.Unix(), to: to.Unix(), mine: map[string]bool{},
		actual: newFold(), sim: newFold()}
	if len(req.Cards) > 0 {
		s.only = map[string]bool{}
		for _, c := range req.Cards {
			s.only[c] = true
		}
	}
	return s, nil
}

func newFold() *fold {
	return &fold{p: card.NewPartition(), cards: map[string]*Outcome{}, open: map[string]int{}}
}

// Apply feeds one log message (its subject and data, as in the METER
// stream) to both replays.
func (s *Simulator) Apply(subject string, data []byte) error {
	s.messages++
	if broker.IsUsageSubject(subject) {
		// the records share data's bytes: the fold keeps no record string
		var h cdr.ChunkHeader
		recs, err := cdr.DecodeChunkView(data, &h, s.recs)
		if err != nil {
			return err
		}
		s.recs = recs
		kept := recs[:0]
		for _, r := range recs {
			if s.mine[r.ICCID] {
				kept = append(kept, r)
			}
		}
		s.recs = recs[:0]
		if len(kept) == 0 {
			return nil
		}
		for _, f := range []*fold{s.actual, s.sim} {
			f.usage(&h, kept, s)
		}
		return nil
	}
	var in card.Input
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	if !s.concerns(&in) {
		return nil
	}
	if len(s.mine) > MaxAccountCards {
		return fmt.Errorf("%w: account %s has more than %d cards", ErrTooBig, s.req.AccountID, MaxAccountCards)
	}
	if err := s.actual.apply(&in, s); err != nil {
		return err
	}
	refused := s.actual.refused()
	simRefused := 0
	for _, alt := range s.transform(&in) {
		if err := s.sim.apply(alt, s); err != nil {
			return err
		}
		simRefused += s.sim.refused()
	}
	if simRefused > refused && s.err == nil {
		// the simulated plan (or pool) cannot take what the log's could:
		// its cards would be missing, and their cost with them
		s.err = fmt.Errorf("%w: the simulated fold refused input %s (%s) that the log's took: %s", ErrInvalid, in.ID, in.Type, s.sim.lastRefusal)
	}
	return s.err
}

// concerns reports whether an input is of the account's history.
func (s *Simulator) concerns(in *card.Input) bool {
	switch in.Type {
	case card.TypePlanChanged, card.TypeClockTicked:
		return true
	case card.TypeCardProvisioned:
		if in.Card == nil || in.Card.AccountID != s.req.AccountID {
			return false
		}
		s.mine[strings.Clone(in.Card.ICCID)] = true
		return true
	case card.TypeAccountChanged:
		return in.Account != nil && in.Account.AccountID == s.req.AccountID
	case card.TypePaymentReceived:
		return in.Payment != nil && in.Payment.AccountID == s.req.AccountID
	case card.TypeChargeRequested:
		return in.Charge != nil && in.Charge.AccountID == s.req.AccountID
	case card.TypePoolChanged:
		return in.Pool != nil && in.Pool.AccountID == s.req.AccountID
	case card.TypeCardRenewed:
		return in.Renewal != nil && s.mine[in.Renewal.ICCID]
	case card.TypeStopRequested, card.TypeResumeRequested:
		return in.Command != nil && s.mine[in.Command.ICCID]
	case card.TypeRebindRequested:
		return in.Rebind != nil && s.mine[in.Rebind.ICCID]
	}
	return false // what the pipeline's own roles report (actuation, webhooks, drift, resyncs) changes no count
}

// transform is the input as the simulation sees it: a plan change adds
// the derived plan; a card's provisioning puts it on the simulated plan.
func (s *Simulator) transform(in *card.Input) []*card.Input {
	o := s.req.Plan
	switch in.Type {
	case card.TypePlanChanged:
		derived := *in.Plan
		derived.PlanID = SimPlanPrefix + in.Plan.PlanID
		if o.QuotaBytes != nil {
			derived.QuotaBytes = *o.QuotaBytes
		}
		if o.MonthlyFeeFen != nil {
			derived.MonthlyFeeFen = *o.MonthlyFeeFen
		}
		if o.OverageFenPerMB != nil {
			derived.OverageFenPerMB = *o.OverageFenPerMB
		}
		alt := *in
		alt.Plan = &derived
		return []*card.Input{in, &alt}
	case card.TypeCardProvisioned:
		cp := *in.Card
		if s.only != nil && !s.only[cp.ICCID] {
			// a card not asked for stays on its plan (it shares the
			// account's money and pool with those asked for)
			cp.PlanID = SimPlanPrefix + cp.PlanID
			alt := *in
			alt.Card = &cp
			return []*card.Input{&alt}
		}
		plan := cp.PlanID
		if o.PlanID != "" {
			plan = o.PlanID
		}
		cp.PlanID = SimPlanPrefix + plan
		if o.AutoStopOverQuota != nil {
			cp.AutoStopOverQuota = *o.AutoStopOverQuota
		}
		if o.PoolID != nil {
			cp.PoolID = *o.PoolID
		}
		alt := *in
		alt.Card = &cp
		return []*card.Input{&alt}
	}
	return []*card.Input{in}
}

func (f *fold) apply(in *card.Input, s *Simulator) error {
	var err error
	f.out, err = f.p.Apply(in, f.out[:0])
	if err != nil {
		return err
	}
	f.note(s)
	return nil
}

func (f *fold) usage(h *cdr.ChunkHeader, recs []cdr.Record, s *Simulator) {
	f.verdicts, f.out = f.p.ApplyUsage(h, recs, nil, f.verdicts, f.out[:0])
	for i, v := range f.verdicts {
		if (v.Status == card.Accepted || v.Status == card.Late) && v.CycleStart >= s.from && v.CycleStart < s.to {
			f.card(recs[i].ICCID).UsageBytes += recs[i].Bytes()
		}
	}
	f.note(s)
}

func (f *fold) card(iccid string) *Outcome {
	o := f.cards[iccid]
	if o == nil {
		o = &Outcome{Stops: []Stop{}}
		f.cards[strings.Clone(iccid)] = o // a record's ICCID shares its chunk's bytes
	}
	return o
}

// refused counts the inputs the last apply refused (and keeps why).
func (f *fold) refused() int {
	n := 0
	for i := range f.out {
		if f.out[i].Type == card.EmitInputRefused {
			n++
			f.lastRefusal = f.out[i].Detail
		}
	}
	return n
}

// note takes from what the fold emitted the charges and stops of the
// period.
func (f *fold) note(s *Simulator) {
	for i := range f.out {
		e := &f.out[i]
		if e.At < s.from || e.At >= s.to {
			continue
		}
		switch e.Type {
		case card.EmitCharged:
			o := &f.other
			if e.ICCID != "" {
				o = f.card(e.ICCID)
			}
			switch e.Detail {
			case "monthly_fee":
				o.MonthlyFeeFen += e.Amount
			case "overage", "overage_adjustment":
				o.OverageFen += e.Amount
			case "keep_number_fee":
				o.KeepNumberFen += e.Amount
			default:
				o.OtherFen += e.Amount
			}
		case card.EmitStopped:
			o := f.card(e.ICCID)
			f.open[e.ICCID+"/"+e.Reason.String()] = len(o.Stops)
			o.Stops = append(o.Stops, Stop{Reason: e.Reason.String(), At: rfc3339(e.At), Cause: e.Cause})
		case card.EmitStopCleared, card.EmitResumed:
			key := e.ICCID + "/" + e.Reason.String()
			if i, ok := f.open[key]; ok {
				f.card(e.ICCID).Stops[i].ClearedAt = rfc3339(e.At)
				delete(f.open, key)
			}
		}
	}
}

func rfc3339(t int64) string { return time.Unix(t, 0).UTC().Format(time.RFC3339) }

// Err is why the simulation cannot be trusted, if it cannot: the
// simulated fold refused an input the log's took (its cards would be
// missing from it), or the account is too big.
func (s *Simulator) Err() error { return s.err }

// Result compares the two replays, for the cards asked for (the
// account's other charges in the totals).
func (s *Simulator) Result() Result {
	req := s.req
	req.Cards = nil // the job keeps the list; the result need not repeat it
	r := Result{Request: req, Cards: []CardResult{}, Messages: s.messages, LogTime: rfc3339(s.actual.p.Now())}
	r.Actual, r.Simulated = Outcome{StopsByReason: map[string]int{}}, Outcome{StopsByReason: map[string]int{}}
	ids := make([]string, 0, len(s.mine))
	for id := range s.mine {
		if s.only == nil || s.only[id] {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		cr := CardResult{ICCID: id, Actual: *s.actual.card(id), Simulated: *s.sim.card(id)}
		cr.PlanID, _ = s.actual.p.PlanOf(id)
		if plan, ok := s.sim.p.PlanOf(id); ok {
			cr.SimPlanID = strings.TrimPrefix(plan, SimPlanPrefix)
		}
		for _, o := range []*Outcome{&cr.Actual, &cr.Simulated} {
			o.TotalFen = o.MonthlyFeeFen + o.OverageFen + o.KeepNumberFen + o.OtherFen
		}
		add(&r.Actual, &cr.Actual, id)
		add(&r.Simulated, &cr.Simulated, id)
		r.Cards = append(r.Cards, cr)
	}
	for _, pair := range []struct{ total, other *Outcome }{{&r.Actual, &s.actual.other}, {&r.Simulated, &s.sim.other}} {
		pair.total.OtherFen += pair.other.OtherFen + pair.other.MonthlyFeeFen + pair.other.OverageFen + pair.other.KeepNumberFen
		pair.total.TotalFen = pair.total.MonthlyFeeFen + pair.total.OverageFen + pair.total.KeepNumberFen + pair.total.OtherFen
	}
	r.SavingsFen = r.Actual.TotalFen - r.Simulated.TotalFen
	return r
}

func add(total, o *Outcome, iccid string) {
	total.UsageBytes += o.UsageBytes
	total.MonthlyFeeFen += o.MonthlyFeeFen
	total.OverageFen += o.OverageFen
	total.KeepNumberFen += o.KeepNumberFen
	total.OtherFen += o.OtherFen
	for _, st := range o.Stops {
		total.StopsByReason[st.Reason]++
	}
}
