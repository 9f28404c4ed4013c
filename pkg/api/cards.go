package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/query"
)

type cardBody struct {
	AccountID         string `json:"account_id"`
	PlanID            string `json:"plan_id"`
	Carrier           string `json:"carrier"`
	IMSI              string `json:"imsi"`
	MSISDN            string `json:"msisdn"`
	AutoStopOverQuota bool   `json:"auto_stop_over_quota"`
	PoolID            string `json:"pool_id"`
	ValidFrom         string `json:"valid_from"`
	ValidUntil        string `json:"valid_until"`
	IMEI              string `json:"imei"`
	BindIMEI          string `json:"bind_imei"`
	StopOnIMEIChange  bool   `json:"stop_on_imei_change"`
	StopOnAnomaly     bool   `json:"stop_on_anomaly"`
}

func parseOptionalTime(field, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return 0, invalid(field, "not an RFC 3339 time with offset")
	}
	return t.Unix(), nil
}

// putCard provisions a card: the event goes to the account's partition,
// then the directory learns the card. A crash between the two leaves the
// card unknown to ingest until the PUT is retried, which is idempotent.
func (s *Server) putCard(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	if reason := cdr.ValidateICCID(iccid); reason != "" {
		return invalid("iccid", reason)
	}
	var b cardBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if err := checkID("account_id", b.AccountID); err != nil {
		return err
	}
	if err := checkID("plan_id", b.PlanID); err != nil {
		return err
	}
	if b.Carrier == "" {
		// only its carrier's usage counts on a card (POST /v1/usage)
		return invalid("carrier", "required: the carrier whose usage counts on the card")
	}
	if err := checkID("carrier", b.Carrier); err != nil {
		return err
	}
	if b.IMSI != "" {
		if reason := cdr.ValidateIMSI(b.IMSI); reason != "" {
			return invalid("imsi", reason)
		}
	}
	if b.MSISDN != "" {
		if reason := cdr.ValidateMSISDN(b.MSISDN); reason != "" {
			return invalid("msisdn", reason)
		}
	}
	if b.IMEI != "" {
		if reason := card.ValidateIMEI(b.IMEI); reason != "" {
			return invalid("imei", reason)
		}
	}
	if b.BindIMEI != "" && b.BindIMEI != card.BindFirstSeen {
		return invalid("bind_imei", `"first_seen" or absent`)
	}
	if _, found := s.dir.Plan(b.PlanID); !found {
		return problem(http.StatusUnprocessableEntity, "refused/unknown-plan", "unknown plan", "plan "+strconv.Quote(b.PlanID)+" does not exist: PUT /v1/plans/{plan_id} first")
	}
	if old, found := s.dir.Card(iccid); found && old.AccountID != b.AccountID {
		return problem(http.StatusConflict, "refused/account-change", "card belongs to another account",
			"card "+iccid+" belongs to account "+strconv.Quote(old.AccountID)+"; moving cards between accounts is not supported")
	}
	from, err := parseOptionalTime("valid_from", b.ValidFrom)
	if err != nil {
		return err
	}
	until, err := parseOptionalTime("valid_until", b.ValidUntil)
	if err != nil {
		return err
	}
	cp := card.CardProvisioned{ICCID: iccid, AccountID: b.AccountID, PlanID: b.PlanID, Carrier: b.Carrier, IMSI: b.IMSI,
		MSISDN: b.MSISDN, AutoStopOverQuota: b.AutoStopOverQuota, PoolID: b.PoolID, ValidFrom: from, ValidUntil: until,
		IMEI: b.IMEI, BindIMEI: b.BindIMEI, StopOnIMEIChange: b.StopOnIMEIChange, StopOnAnomaly: b.StopOnAnomaly}
	cpJSON, _ := json.Marshal(cp)
	in := card.Input{Type: card.TypeCardProvisioned, ID: "card-" + iccid + "-" + contentID(cpJSON), At: s.clock.Now(), Card: &cp}
	data, _ := json.Marshal(in)
	pos, err := s.publish(r.Context(), broker.BillingSubject(broker.Partition(b.AccountID, s.cfg.Partitions)), in.ID, data)
	if err != nil {
		return err
	}
	d, err := s.decide(r, b.AccountID, pos)
	if err != nil {
		return err // refused: the directory keeps what the fold keeps
	}
	if err := s.dir.PutCard(r.Context(), CardEntry{ICCID: iccid, AccountID: b.AccountID, PlanID: b.PlanID, Carrier: b.Carrier, IMSI: b.IMSI, MSISDN: b.MSISDN}); err != nil {
		return err
	}
	return decided(w, d, map[string]any{"iccid": iccid, "account_id": b.AccountID, "plan_id": b.PlanID, "carrier": b.Carrier,
		"auto_stop_over_quota": b.AutoStopOverQuota, "position": pos})
}

// CardResponse is the read model of a card (GET /v1/cards/{iccid}).
type CardResponse struct {
	ICCID             string          `json:"iccid"`
	AccountID         string          `json:"account_id"`
	PlanID            string          `json:"plan_id"`
	PoolID            string          `json:"pool_id,omitempty"`
	Carrier           string          `json:"carrier"`
	Status            card.Status     `json:"status"`
	StopReasons       []string        `json:"stop_reasons"`
	Cycle             CycleView       `json:"cycle"`
	AutoStopOverQuota bool            `json:"auto_stop_over_quota"`
	ValidFrom         string          `json:"valid_from,omitempty"`
	ValidUntil        string          `json:"valid_until,omitempty"`
	ExpiredAt         string          `json:"expired_at,omitempty"`
	CancelAt          string          `json:"cancel_at,omitempty"` // an expired card's cancellation, unless renewed first
	TimeZone          string          `json:"time_zone"`           // the plan's: its cycles' days are of this zone
	Device            DeviceView      `json:"device"`
	ActiveWarnings    []string        `json:"active_warnings"`
	Account           *AccountSummary `json:"account,omitempty"`
	LastCommand       *CommandView    `json:"last_command,omitempty"`
	LogTime           string          `json:"log_time"`
	Position          uint64          `json:"position"`
}

// DeviceView is the card's device binding: the bound device and the last
// one seen (the first 14 digits of each IMEI), and its options (the
// card's or its plan's).
type DeviceView struct {
	IMEI             string `json:"imei,omitempty"`
	LastIMEI         string `json:"last_imei,omitempty"`
	BindFirstSeen    bool   `json:"bind_first_seen"`
	StopOnIMEIChange bool   `json:"stop_on_imei_change"`
}

// CycleView is the card's current billing cycle.
type CycleView struct {
	Start          string `json:"start"`
	End            string `json:"end"`
	UsageBytes     uint64 `json:"usage_bytes"`
	QuotaBytes     uint64 `json:"quota_bytes"`
	OvershootBytes uint64 `json:"overshoot_bytes"`
}

// AccountSummary is the balance part of a card read.
type AccountSummary struct {
	AccountID      string `json:"account_id"`
	BalanceFen     int64  `json:"balance_fen"`
	CreditLimitFen int64  `json:"credit_limit_fen"`
	InArrears      bool   `json:"in_arrears"`
}

// CommandView is the outcome of the card's latest manual command.
type CommandView struct {
	ID      string `json:"id"`
	Applied bool   `json:"applied"`
	Code    string `json:"code,omitempty"`
}

func rfc3339(t int64) string {
	if t == 0 {
		return ""
	}
	return time.Unix(t, 0).UTC().Format(time.RFC3339)
}

func cardResponse(v *card.View, now int64, applied uint64) CardResponse {
	warnings := v.Warnings
	if warnings == nil {
		warnings = []string{}
	}
	r := CardResponse{
		ICCID: v.ICCID, AccountID: v.AccountID, PlanID: v.PlanID, PoolID: v.PoolID, Carrier: v.Carrier, Status: v.Status,
		StopReasons: v.Reasons.Names(), AutoStopOverQuota: v.AutoStopOverQuota,
		Cycle: CycleView{Start: rfc3339(v.Cycle.Start), End: rfc3339(v.Cycle.End), UsageBytes: v.UsageBytes,
			QuotaBytes: v.QuotaBytes, OvershootBytes: v.OvershootBytes},
		ValidFrom: rfc3339(v.ValidFrom), ValidUntil: rfc3339(v.ValidUntil), ExpiredAt: rfc3339(v.ExpiredAt), CancelAt: rfc3339(v.CancelAt), TimeZone: v.TimeZone,
		ActiveWarnings: warnings, LogTime: rfc3339(now), Position: applied,
	}
	r.Device = DeviceView{IMEI: v.IMEI, LastIMEI: v.LastIMEI, BindFirstSeen: v.BindFirstSeen, StopOnIMEIChange: v.StopOnIMEIChange}
	if v.Account.AccountID != "" {
		r.Account = &AccountSummary{AccountID: v.Account.AccountID, BalanceFen: v.Account.BalanceFen,
			CreditLimitFen: v.Account.CreditLimitFen, InArrears: v.Account.InArrears}
	}
	if v.LastCommand.ID != "" {
		r.LastCommand = &CommandView{ID: v.LastCommand.ID, Applied: v.LastCommand.Applied, Code: v.LastCommand.Code}
	}
	return r
}

// visibleCard finds a card the request's principal may use scope on: a
// card of another account is, to an account's token, no such card.
func (s *Server) visibleCard(r *http.Request, iccid, scope string) (CardEntry, error) {
	entry, found := s.dir.Card(iccid)
	if !found || !principal(r).May(scope, entry.AccountID) {
		return CardEntry{}, problem(http.StatusNotFound, "not-found/card", "no such card", iccid)
	}
	return entry, nil
}

// readCard asks the card's projector for it, at or after minPos, when the
// request's principal may read it.
func (s *Server) readCard(r *http.Request, iccid string, minPos uint64) (*query.Reply, error) {
	entry, err := s.visibleCard(r, iccid, ScopeRead)
	if err != nil {
		return nil, err
	}
	return s.queryCard(r, entry, iccid, minPos)
}

// queryCard asks the projector of a card found in the directory.
func (s *Server) queryCard(r *http.Request, entry CardEntry, iccid string, minPos uint64) (*query.Reply, error) {
	reply, err := s.query(r.Context(), broker.Partition(entry.AccountID, s.cfg.Partitions), query.Request{Kind: query.KindCard, ID: iccid, MinPosition: minPos})
	if err != nil {
		return nil, err
	}
	if !reply.Found {
		// the directory knows it, the projector not yet: provisioning is in flight
		return nil, &retryProblem{problem(http.StatusNotFound, "not-found/card-pending", "card not yet projected", "retry, or pass ?min_position")}
	}
	return reply, nil
}

func (s *Server) getCard(w http.ResponseWriter, r *http.Request) error {
	minPos, err := minPosition(r)
	if err != nil {
		return err
	}
	reply, err := s.readCard(r, r.PathValue("iccid"), minPos)
	if err != nil {
		return err
	}
	return ok(w, cardResponse(reply.Card, reply.Now, reply.Applied))
}
