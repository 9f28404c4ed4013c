package api

import (
	"net/http"
	"regexp"
	"strconv"

	"github.com/nats-io/nuid"

	"github.com/cardmeter/cardmeter/pkg/card"
)

type resyncBody struct {
	Operator string `json:"operator"`
	Reason   string `json:"reason"`
}

// postResync asks that the card's state be sent to its carrier again: the
// input goes to the card's partition, where the fold emits
// card.resync_requested.v1 with the action the state needs at that place
// in the card's history, and the actuator sends it in order with the
// card's other actions (a reconciliation's mend cannot overtake a resume).
func (s *Server) postResync(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	entry, err := s.visibleCard(r, iccid, ScopeOperator)
	if err != nil {
		return err
	}
	var b resyncBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	operator, id, err := asker(r, b.Operator, "resync-", iccid)
	if err != nil {
		return err
	}
	b.Operator = operator
	pos, err := s.writeInput(r, entry.AccountID, card.Input{Type: card.TypeResyncRequested, ID: id,
		Resync: &card.ResyncRequest{ICCID: iccid, Reason: b.Reason, By: b.Operator}})
	if err != nil {
		return err
	}
	d, err := s.decide(r, entry.AccountID, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"iccid": iccid, "resync_id": id, "position": pos})
}

type driftBody struct {
	Counts map[string]int `json:"counts"`
	Cards  []string       `json:"cards"`
	Sent   int            `json:"sent"`
}

// postDrift writes a reconciliation's finding (`cardmeter reconcile`) to
// the log, where the fold makes it carrier.drift_detected.v1: in the
// stream, the webhooks and ClickHouse like the actuator's own findings.
func (s *Server) postDrift(w http.ResponseWriter, r *http.Request) error {
	carrier := r.PathValue("carrier")
	if err := checkID("carrier", carrier); err != nil {
		return err
	}
	var b driftBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if len(b.Cards) > 100 {
		b.Cards = b.Cards[:100] // the first ones; the counts say how many
	}
	for _, c := range b.Cards {
		if !cardRef.MatchString(c) {
			return invalid("cards", "each a card's ICCID (up to 32 letters and digits): "+strconv.Quote(c))
		}
	}
	if b.Sent < 0 {
		return invalid("sent", "0 or more")
	}
	counts := map[string]int{} // every kind named, 0 when none
	for _, k := range driftKinds {
		counts[k] = 0
	}
	for k, n := range b.Counts {
		if _, known := counts[k]; !known || n < 0 {
			return invalid("counts", "kinds are active_at_carrier, inactive_at_carrier, missing_at_carrier, unknown_to_cardmeter, with counts of 0 or more")
		}
		counts[k] = n
	}
	b.Counts = counts
	id := "drift-" + nuid.Next()
	if k := r.Header.Get("Idempotency-Key"); k != "" {
		id = "drift-" + contentID([]byte(carrier), []byte(k))
	}
	pos, err := s.writeInput(r, carrier, card.Input{Type: card.TypeDriftReported, ID: id,
		Drift: &card.DriftReport{Carrier: carrier, Counts: b.Counts, Cards: b.Cards, Sent: b.Sent}})
	if err != nil {
		return err
	}
	d, err := s.decide(r, carrier, pos)
	if err != nil {
		return err
	}
	return decided(w, d, map[string]any{"carrier": carrier, "report_id": id, "position": pos})
}

// driftKinds are actuate.DriftKinds (the API does not depend on the
// actuator).
var driftKinds = []string{"active_at_carrier", "inactive_at_carrier", "missing_at_carrier", "unknown_to_cardmeter"}

var cardRef = regexp.MustCompile(`^[0-9A-Za-z]{1,32}$`)
