package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// maxHistory bounds the events one history read returns.
const maxHistory = 10000

// getCardEvents answers "why is this card stopped": the events emitted for
// the card, oldest first, each naming its cause. They are read from the
// EVENTS stream by subject, so the projector keeps no history in memory.
func (s *Server) getCardEvents(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	minPos, err := minPosition(r)
	if err != nil {
		return err
	}
	if _, err := s.readCard(r, iccid, minPos); err != nil {
		return err // unknown, or min_position not applied (and so not published) yet
	}
	// read message by message (the next one on the card's subjects after
	// the last), not through a consumer: the API's NATS user may create
	// no consumer on EVENTS, where the sink's and subscribers' are
	stream, err := s.js.Stream(r.Context(), broker.StreamEvents)
	if err != nil {
		return err
	}
	events := []json.RawMessage{}
	for seq := uint64(1); len(events) < maxHistory; {
		m, err := stream.GetMsg(r.Context(), seq, jetstream.WithGetMsgSubject(broker.EventSubject("*.*", iccid)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return err
		}
		events = append(events, json.RawMessage(m.Data))
		seq = m.Sequence + 1
	}
	return ok(w, map[string]any{"iccid": iccid, "events": events})
}

// CardListResponse is GET /v1/cards.
type CardListResponse struct {
	Cards      []CardResponse `json:"cards"`
	NextCursor string         `json:"next_cursor,omitempty"`
}

// listCards pages through cards in ICCID order, filtered by status, stop
// reason and account, asking every partition (or the account's) and
// merging their pages.
func (s *Server) listCards(w http.ResponseWriter, r *http.Request) error {
	qv := r.URL.Query()
	f := card.Filter{Status: card.Status(qv.Get("status")), AccountID: qv.Get("account_id")}
	switch f.Status {
	case "", card.InService, card.Stopped, card.Cancelled:
	default:
		return invalid("status", "one of in_service, stopped, cancelled")
	}
	if v := qv.Get("reason"); v != "" {
		rs, ok := card.ParseReason(v)
		if !ok {
			return invalid("reason", "one of manual, over_quota, arrears, expiry, pool")
		}
		f.Reason = rs
	}
	limit, err := queryLimit(qv, 100, 1000)
	if err != nil {
		return err
	}
	// the pages to merge: every partition's, or each account's
	type page struct {
		part    int
		account string
	}
	var pages []page
	switch accounts, limited := principal(r).Accounts(ScopeRead); {
	case f.AccountID != "" && principal(r).May(ScopeRead, f.AccountID):
		pages = append(pages, page{broker.Partition(f.AccountID, s.cfg.Partitions), f.AccountID})
	case f.AccountID != "":
		// another account's: none of its cards are there for this token
	case limited:
		for _, a := range accounts {
			pages = append(pages, page{broker.Partition(a, s.cfg.Partitions), a})
		}
	default:
		for p := 0; p < s.cfg.Partitions; p++ {
			pages = append(pages, page{part: p})
		}
	}
	var all []CardResponse
	for _, pg := range pages {
		pf := f
		pf.AccountID = pg.account
		reply, err := s.query(r.Context(), pg.part, query.Request{Kind: query.KindCards, Filter: pf, After: qv.Get("cursor"), Limit: limit})
		if err != nil {
			return err
		}
		for i := range reply.Cards {
			all = append(all, cardResponse(&reply.Cards[i], reply.Now, reply.Applied))
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ICCID < all[j].ICCID })
	resp := CardListResponse{Cards: all}
	if len(all) > limit {
		resp.Cards = all[:limit]
	}
	if len(resp.Cards) == limit {
		resp.NextCursor = resp.Cards[limit-1].ICCID
	}
	if resp.Cards == nil {
		resp.Cards = []CardResponse{}
	}
	return ok(w, resp)
}
