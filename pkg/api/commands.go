package api

import (
	"net/http"
	"strings"

	"github.com/nats-io/nuid"

	"github.com/cardmeter/cardmeter/pkg/card"
)

type commandBody struct {
	Operator string `json:"operator"`
	Note     string `json:"note"`
}

// command writes an operator's manual stop or resume to the log, waits for
// the projector to decide it, and answers with the decision: 200 and the
// card when applied, 409 with a typed problem when refused (the plan
// expired, the account is in arrears, the card is over quota or
// cancelled). An Idempotency-Key makes a retry the same command.
func (s *Server) command(typ card.InputType) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		iccid := r.PathValue("iccid")
		entry, err := s.visibleCard(r, iccid, ScopeOperator)
		if err != nil {
			return err
		}
		var b commandBody
		if err := decodeBody(r, &b); err != nil {
			return err
		}
		operator, id, err := asker(r, b.Operator, "cmd-", iccid, string(typ))
		if err != nil {
			return err
		}
		b.Operator = operator
		pos, err := s.writeInput(r, entry.AccountID, card.Input{Type: typ, ID: id, Command: &card.ManualCommand{ICCID: iccid, Operator: b.Operator, Note: b.Note}})
		if err != nil {
			return err
		}
		return s.decidedCommand(w, r, entry, iccid, id, pos, "command refused")
	}
}

// decidedCommand answers an operator's command on a card (id, written at
// pos) with the fold's decision: 200 with the card, 409 with the refusal
// in words, or 202 when a later command was decided after it.
func (s *Server) decidedCommand(w http.ResponseWriter, r *http.Request, entry CardEntry, iccid, id string, pos uint64, refused string) error {
	reply, err := s.queryCard(r, entry, iccid, pos)
	if err != nil {
		return err
	}
	v := reply.Card
	switch {
	case v.LastCommand.ID != id:
		// another command for the card was decided after ours
		writeJSON(w, http.StatusAccepted, "application/json", map[string]any{"command_id": id, "position": pos,
			"detail": "decided; a later command followed: see GET /v1/cards/{iccid}/events"})
		return nil
	case !v.LastCommand.Applied:
		return problem(http.StatusConflict, "refused/"+v.LastCommand.Code, refused, RefusalDetail(v.LastCommand.Code))
	}
	return ok(w, cardResponse(v, reply.Now, reply.Applied))
}

// RefusalDetail says a refused command's code in words.
func RefusalDetail(code string) string {
	switch code {
	case card.RefusedExpired:
		return "the card's plan has expired: renew it first"
	case card.RefusedInArrears:
		return "the account is in arrears: a payment must bring the balance to zero first"
	case card.RefusedOverQuota:
		return "the card (or its pool) is over quota: it resumes at the next cycle"
	case card.RefusedCancelled:
		return "the card is cancelled"
	}
	return code
}

// asker checks who asks for an operator's write and names it: an
// account's token speaks for its holder (the events name the token, then
// who the holder says asked). The input's id comes from the
// Idempotency-Key when there is one (a retry is the same input), else is
// new.
func asker(r *http.Request, operator, prefix string, key ...string) (who, id string, err error) {
	if strings.TrimSpace(operator) == "" {
		return "", "", invalid("operator", "required: who asks is recorded")
	}
	if pr := principal(r); pr != nil && !pr.Has(ScopeOperator) {
		operator = pr.Name + ": " + operator
	}
	id = prefix + nuid.Next()
	if k := r.Header.Get("Idempotency-Key"); k != "" {
		parts := make([][]byte, 0, len(key)+1)
		for _, s := range key {
			parts = append(parts, []byte(s))
		}
		id = prefix + contentID(append(parts, []byte(k))...)
	}
	return operator, id, nil
}

type rebindBody struct {
	IMEI     string `json:"imei"`
	Operator string `json:"operator"`
	Note     string `json:"note"`
}

// postRebind binds a card to another device at an operator's word, and
// lifts a device-mismatch stop (POST /v1/cards/{iccid}/rebind). It waits
// for the fold: 200 with the card, or 409 with the refusal in words.
func (s *Server) postRebind(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	entry, err := s.visibleCard(r, iccid, ScopeOperator)
	if err != nil {
		return err
	}
	var b rebindBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if reason := card.ValidateIMEI(b.IMEI); reason != "" {
		return invalid("imei", reason)
	}
	operator, id, err := asker(r, b.Operator, "rebind-", iccid, b.IMEI)
	if err != nil {
		return err
	}
	pos, err := s.writeInput(r, entry.AccountID, card.Input{Type: card.TypeRebindRequested, ID: id,
		Rebind: &card.Rebind{ICCID: iccid, IMEI: b.IMEI, Operator: operator, Note: b.Note}})
	if err != nil {
		return err
	}
	return s.decidedCommand(w, r, entry, iccid, id, pos, "rebind refused")
}
