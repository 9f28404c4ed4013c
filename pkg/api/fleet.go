package api

import (
	"net/http"
	"time"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// FleetResponse is GET /v1/fleet: every partition's last census added up.
type FleetResponse struct {
	card.Census
	// Partitions counted; Missing lists those with no census to give (a
	// partition restoring): the counts leave their cards out.
	Partitions int    `json:"partitions"`
	Missing    []int  `json:"missing"`
	At         string `json:"at"` // the newest census's log time
}

// fleet answers the fleet's counts from each partition's last census (the
// fold takes it every 15 s; reading it holds no fold).
func (s *Server) fleet(w http.ResponseWriter, r *http.Request) error {
	total := card.Census{ByReason: map[string]int{}}
	resp := FleetResponse{Missing: []int{}}
	for part := 0; part < s.cfg.Partitions; part++ {
		reply, err := s.query(r.Context(), part, query.Request{Kind: query.KindCensus})
		if err != nil || !reply.Found || reply.Census == nil {
			resp.Missing = append(resp.Missing, part)
			continue
		}
		total = total.Add(*reply.Census)
		resp.Partitions++
	}
	resp.Census = total
	if total.At > 0 {
		resp.At = time.Unix(total.At, 0).UTC().Format(time.RFC3339)
	}
	return ok(w, resp)
}
