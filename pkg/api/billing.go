package api

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// writeInput stores an input event in the partition of an account and
// returns its log position. id makes the write idempotent.
func (s *Server) writeInput(r *http.Request, accountID string, in card.Input) (uint64, error) {
	in.At = s.clock.Now()
	data, _ := json.Marshal(in)
	return s.publish(r.Context(), broker.BillingSubject(broker.Partition(accountID, s.cfg.Partitions)), in.ID, data)
}

// decide waits for the fold's decision on the input stored at pos in the
// partition of accountID. A refusal is a 409 problem naming the rule
// (cardmeter:refused/<code>). Applied, it answers "applied"; not known in
// time (the projector is busy or restoring) it answers "pending": the
// input is stored either way and the fold decides it, so the answer says
// only what is known.
func (s *Server) decide(r *http.Request, accountID string, pos uint64) (string, error) {
	reply, err := s.query(r.Context(), broker.Partition(accountID, s.cfg.Partitions),
		query.Request{Kind: query.KindInputs, Seqs: []uint64{pos}, MinPosition: pos})
	if err != nil || !reply.Found {
		return "pending", nil
	}
	if d := reply.Inputs[pos]; d.Refused {
		return "", problem(http.StatusConflict, "refused/"+d.Code, "refused", d.Detail)
	}
	return "applied", nil
}

// decided answers a write with what the fold decided: 200 when applied,
// 202 when the decision is pending.
func decided(w http.ResponseWriter, decision string, body map[string]any) error {
	body["decision"] = decision
	status := http.StatusOK
	if decision != "applied" {
		status = http.StatusAccepted
	}
	writeJSON(w, status, "application/json", body)
	return nil
}

type accountBody struct {
	CreditLimitFen      int64 `json:"credit_limit_fen"`
	LowBalanceFen       int64 `json:"low_balance_fen"`
	AutoResumeOnPayment bool  `json:"auto_resume_on_payment"`
}

func (s *Server) putAccount(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("account_id")
	if err := checkID("account_id", id); err != nil {
		return err
	}
	var b accountBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if b.CreditLimitFen < 0 {
		return invalid("credit_limit_fen", "must be ≥ 0")
	}
	if b.LowBalanceFen < 0 {
		return invalid("low_balance_fen", "must be ≥ 0")
	}
	ac := card.AccountChanged{AccountID: id, CreditLimitFen: b.CreditLimitFen, LowBalanceFen: b.LowBalanceFen, AutoResumeOnPayment: b.AutoResumeOnPayment}
	acJSON, _ := json.Marshal(ac)
	pos, err := s.writeInput(r, id, card.Input{Type: card.TypeAccountChanged, ID: "account-" + id + "-" + contentID(acJSON), Account: &ac})
	if err != nil {
		return err
	}
	d, err := s.decide(r, id, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"account_id": id, "credit_limit_fen": b.CreditLimitFen, "low_balance_fen": b.LowBalanceFen,
		"auto_resume_on_payment": b.AutoResumeOnPayment, "position": pos})
}

// AccountResponse is GET /v1/accounts/{account_id}.
type AccountResponse struct {
	AccountID           string         `json:"account_id"`
	BalanceFen          int64          `json:"balance_fen"`
	CreditLimitFen      int64          `json:"credit_limit_fen"`
	LowBalanceFen       int64          `json:"low_balance_fen"`
	AutoResumeOnPayment bool           `json:"auto_resume_on_payment"`
	InArrears           bool           `json:"in_arrears"`
	ActiveWarnings      []string       `json:"active_warnings"`
	Cards               map[string]int `json:"cards"`
	Pools               []PoolResponse `json:"pools"`
	Position            uint64         `json:"position"`
}

// PoolResponse is a pool of an account: its quota shared by its cards.
type PoolResponse struct {
	PoolID     string    `json:"pool_id"`
	QuotaBytes uint64    `json:"quota_bytes"`
	UsageBytes uint64    `json:"usage_bytes"`
	Cycle      CycleView `json:"cycle"`
	Exhausted  bool      `json:"exhausted"`
	Cards      int       `json:"cards"`     // not cancelled
	TimeZone   string    `json:"time_zone"` // its cycles' zone
}

func (s *Server) getAccount(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("account_id")
	if !principal(r).May(ScopeRead, id) {
		return problem(http.StatusNotFound, "not-found/account", "no such account", id)
	}
	minPos, err := minPosition(r)
	if err != nil {
		return err
	}
	reply, err := s.query(r.Context(), broker.Partition(id, s.cfg.Partitions), query.Request{Kind: query.KindAccount, ID: id, MinPosition: minPos})
	if err != nil {
		return err
	}
	if !reply.Found {
		return problem(http.StatusNotFound, "not-found/account", "no such account", id)
	}
	a := reply.Account
	resp := AccountResponse{AccountID: a.AccountID, BalanceFen: a.BalanceFen, CreditLimitFen: a.CreditLimitFen,
		LowBalanceFen: a.LowBalanceFen, AutoResumeOnPayment: a.AutoResumeOnPayment, InArrears: a.InArrears,
		ActiveWarnings: []string{}, Cards: map[string]int{}, Pools: []PoolResponse{}, Position: reply.Applied}
	for _, po := range reply.Pools {
		resp.Pools = append(resp.Pools, PoolResponse{PoolID: po.PoolID, QuotaBytes: po.QuotaBytes, UsageBytes: po.UsageBytes,
			Cycle:     CycleView{Start: rfc3339(po.Cycle.Start), End: rfc3339(po.Cycle.End), UsageBytes: po.UsageBytes, QuotaBytes: po.QuotaBytes},
			Exhausted: po.Exhausted, Cards: po.Cards, TimeZone: po.TimeZone})
	}
	if a.LowBalanceWarned {
		resp.ActiveWarnings = append(resp.ActiveWarnings, card.WarnLowBalance)
	}
	for _, st := range []card.Status{card.InService, card.Stopped, card.Cancelled} {
		resp.Cards[string(st)] = a.CardsByStatus[st]
	}
	return ok(w, resp)
}

type moneyBody struct {
	PaymentID string `json:"payment_id"`
	ChargeID  string `json:"charge_id"`
	AmountFen int64  `json:"amount_fen"`
	PaidAt    string `json:"paid_at"`
	Reason    string `json:"reason"`
}

// postPayment credits an account. The payment id makes it idempotent: the
// log's duplicate window answers a retry with the first position, and the
// fold counts a payment id once however late it comes again.
func (s *Server) postPayment(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("account_id")
	var b moneyBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if err := checkID("payment_id", b.PaymentID); err != nil {
		return err
	}
	if b.AmountFen <= 0 {
		return invalid("amount_fen", "must be a positive integer (fen)")
	}
	paid, err := parseOptionalTime("paid_at", b.PaidAt)
	if err != nil {
		return err
	}
	pm := card.Payment{AccountID: id, PaymentID: b.PaymentID, AmountFen: b.AmountFen, PaidAt: paid}
	pos, err := s.writeInput(r, id, card.Input{Type: card.TypePaymentReceived, ID: "payment-" + id + "-" + b.PaymentID, Payment: &pm})
	if err != nil {
		return err
	}
	d, err := s.decide(r, id, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"account_id": id, "payment_id": b.PaymentID, "amount_fen": b.AmountFen, "position": pos})
}

// postCharge debits an account for a charge billing decided.
func (s *Server) postCharge(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("account_id")
	var b moneyBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if err := checkID("charge_id", b.ChargeID); err != nil {
		return err
	}
	if b.AmountFen <= 0 {
		return invalid("amount_fen", "must be a positive integer (fen)")
	}
	ch := card.Charge{AccountID: id, ChargeID: b.ChargeID, AmountFen: b.AmountFen, Reason: b.Reason}
	pos, err := s.writeInput(r, id, card.Input{Type: card.TypeChargeRequested, ID: "charge-" + id + "-" + b.ChargeID, Charge: &ch})
	if err != nil {
		return err
	}
	d, err := s.decide(r, id, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"account_id": id, "charge_id": b.ChargeID, "amount_fen": b.AmountFen, "reason": b.Reason, "position": pos})
}

type poolBody struct {
	AccountID      string  `json:"account_id"`
	QuotaBytes     *uint64 `json:"quota_bytes"`
	TimeZone       string  `json:"time_zone"`
	CycleAnchorDay int     `json:"cycle_anchor_day"`
}

func (s *Server) putPool(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("pool_id")
	if err := checkID("pool_id", id); err != nil {
		return err
	}
	var b poolBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if err := checkID("account_id", b.AccountID); err != nil {
		return err
	}
	if b.QuotaBytes == nil {
		return invalid("quota_bytes", "required")
	}
	if b.CycleAnchorDay < 0 || b.CycleAnchorDay > 31 {
		return invalid("cycle_anchor_day", "must be 1 to 31")
	}
	if b.TimeZone == "" {
		b.TimeZone = card.DefaultTimeZone
	}
	if err := checkZone(b.TimeZone); err != nil {
		return err
	}
	if _, err := card.Zone(b.TimeZone); err != nil {
		return invalid("time_zone", "unknown time zone "+strconv.Quote(b.TimeZone))
	}
	pc := card.PoolChanged{PoolID: id, AccountID: b.AccountID, QuotaBytes: *b.QuotaBytes, TimeZone: b.TimeZone, CycleAnchorDay: b.CycleAnchorDay}
	pcJSON, _ := json.Marshal(pc)
	pos, err := s.writeInput(r, b.AccountID, card.Input{Type: card.TypePoolChanged, ID: "pool-" + id + "-" + contentID(pcJSON), Pool: &pc})
	if err != nil {
		return err
	}
	d, err := s.decide(r, b.AccountID, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"pool_id": id, "account_id": b.AccountID, "quota_bytes": *b.QuotaBytes, "time_zone": b.TimeZone, "position": pos})
}

type renewalBody struct {
	RenewalID  string `json:"renewal_id"`
	ValidUntil string `json:"valid_until"`
	Months     int    `json:"months"`
}

// postRenewal extends a card's validity (续费): to valid_until, or by months
// from the later of its current end and now.
func (s *Server) postRenewal(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	entry, found := s.dir.Card(iccid)
	if !found {
		return problem(http.StatusNotFound, "not-found/card", "no such card", iccid)
	}
	var b renewalBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if err := checkID("renewal_id", b.RenewalID); err != nil {
		return err
	}
	until, err := parseOptionalTime("valid_until", b.ValidUntil)
	if err != nil {
		return err
	}
	if (until == 0) == (b.Months <= 0) {
		return invalid("valid_until", "give valid_until or a positive months, not both")
	}
	rn := card.Renewal{ICCID: iccid, RenewalID: b.RenewalID, ValidUntil: until, Months: b.Months}
	pos, err := s.writeInput(r, entry.AccountID, card.Input{Type: card.TypeCardRenewed, ID: "renewal-" + iccid + "-" + b.RenewalID, Renewal: &rn})
	if err != nil {
		return err
	}
	d, err := s.decide(r, entry.AccountID, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"iccid": iccid, "renewal_id": b.RenewalID, "valid_until": rfc3339(until), "months": b.Months, "position": pos})
}
