package api

import (
	"net/http"
	"strings"
)

// SearchMatch is a card found by one of its numbers.
type SearchMatch struct {
	ICCID     string `json:"iccid"`
	AccountID string `json:"account_id"`
	Carrier   string `json:"carrier"`
	Matched   string `json:"matched"` // iccid, imsi or msisdn
}

// search is GET /v1/search?q=: the cards whose ICCID, IMSI or MSISDN is q
// (spaces and a leading + ignored), from the directory, never from a
// partition's state: a search holds no fold. An account's token finds its
// accounts' cards only.
func (s *Server) search(w http.ResponseWriter, r *http.Request) error {
	q := strings.TrimPrefix(strings.ReplaceAll(strings.TrimSpace(r.URL.Query().Get("q")), " ", ""), "+")
	if q == "" || len(q) > 32 {
		return invalid("q", "an ICCID, IMSI or MSISDN")
	}
	matches := []SearchMatch{}
	seen := map[string]bool{}
	for _, by := range []struct{ field, iccid, imsi, msisdn string }{{"iccid", q, "", ""}, {"imsi", "", q, ""}, {"msisdn", "", "", q}} {
		c, ok := s.dir.Resolve(by.iccid, by.imsi, by.msisdn)
		if !ok || seen[c.ICCID] || !principal(r).May(ScopeRead, c.AccountID) {
			continue
		}
		seen[c.ICCID] = true
		matches = append(matches, SearchMatch{ICCID: c.ICCID, AccountID: c.AccountID, Carrier: c.Carrier, Matched: by.field})
	}
	return ok(w, map[string]any{"q": q, "matches": matches})
}
