// Package query is the contract between the projector, which owns the
// partitions' state, and its readers (the API): a Query over NATS
// request/reply on broker.QuerySubject(partition), and its Reply.
package query

import "github.com/cardmeter/cardmeter/pkg/card"

// Request asks the projector that owns a partition for its state, over NATS
// request/reply on broker.QuerySubject(partition).
type Request struct {
	Kind        Kind        `json:"kind"`
	ID          string      `json:"id,omitempty"` // the card, account or pool
	MinPosition uint64      `json:"min_position,omitempty"`
	Filter      card.Filter `json:"filter,omitempty"` // cards
	After       string      `json:"after,omitempty"`  // cards: the cursor (an ICCID)
	Limit       int         `json:"limit,omitempty"`  // cards
	Seqs        []uint64    `json:"seqs,omitempty"`   // chunks: usage chunks' log positions
}

// Kind names what a Request asks for.
type Kind string

const (
	KindCard    Kind = "card"
	KindAccount Kind = "account"
	KindCards   Kind = "cards"
	KindPool    Kind = "pool"
	// KindChunks asks for the verdicts of usage chunks (by position).
	KindChunks Kind = "chunks"
	// KindInputs asks what the fold decided of billing and provisioning
	// inputs (by position): applied, or refused and why.
	KindInputs Kind = "inputs"
	// KindCensus asks for the partition's last census (cards by status and
	// reason, the nearest their quota, the forecasts): taken every 15 s by
	// the fold, read without holding it.
	KindCensus Kind = "census"
)

// Reply answers a Request.
type Reply struct {
	Found   bool              `json:"found"`
	Card    *card.View        `json:"card,omitempty"`
	Account *card.AccountView `json:"account,omitempty"`
	Pools   []card.PoolView   `json:"pools,omitempty"` // KindAccount: the account's pools
	Pool    *card.PoolView    `json:"pool,omitempty"`
	Cards   []card.View       `json:"cards,omitempty"`
	Census  *card.Census      `json:"census,omitempty"`
	// Chunks: the verdicts of each asked chunk the partition still keeps.
	Chunks map[uint64]*ChunkVerdicts `json:"chunks,omitempty"`
	// Inputs: the decision on each asked input the partition still keeps.
	Inputs  map[uint64]*Decision `json:"inputs,omitempty"`
	Now     int64                `json:"now"`     // the partition's log time
	Applied uint64               `json:"applied"` // the partition's applied sequence
	Error   string               `json:"error,omitempty"`
	// Restoring: the partition is restoring its checkpoint (or retrying
	// after a failure) and knows nothing yet; ask again shortly.
	Restoring bool `json:"restoring,omitempty"`
	Timeout   bool `json:"timeout,omitempty"` // min_position was not reached in time
}

// Decision is what the fold made of one input: applied, or refused with
// the rule (card.Refused*) and why.
type Decision struct {
	Refused bool   `json:"refused,omitempty"`
	Code    string `json:"code,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// ChunkVerdicts counts what the fold made of the records of one usage chunk.
type ChunkVerdicts struct {
	Accepted      int `json:"accepted"`
	Late          int `json:"late"`
	Duplicate     int `json:"duplicate"`
	Conflict      int `json:"conflict"`
	UnknownCard   int `json:"unknown_card"`
	TooLate       int `json:"too_late"`
	CardCancelled int `json:"card_cancelled"`
}

// Add counts one verdict.
func (c *ChunkVerdicts) Add(s card.UsageStatus) {
	switch s {
	case card.Accepted:
		c.Accepted++
	case card.Late:
		c.Late++
	case card.Duplicate:
		c.Duplicate++
	case card.Conflict:
		c.Conflict++
	case card.UnknownCard:
		c.UnknownCard++
	case card.TooLate:
		c.TooLate++
	case card.CardCancelled:
		c.CardCancelled++
	}
}

// Sum adds another chunk's counts.
func (c *ChunkVerdicts) Sum(o *ChunkVerdicts) {
	c.Accepted += o.Accepted
	c.Late += o.Late
	c.Duplicate += o.Duplicate
	c.Conflict += o.Conflict
	c.UnknownCard += o.UnknownCard
	c.TooLate += o.TooLate
	c.CardCancelled += o.CardCancelled
}
