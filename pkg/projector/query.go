package projector

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
)

// Query asks the projector that owns a partition for its state, over NATS
// request/reply on broker.QuerySubject(partition).
type Query struct {
	Kind        QueryKind   `json:"kind"`
	ID          string      `json:"id,omitempty"` // the card, account or pool
	MinPosition uint64      `json:"min_position,omitempty"`
	Filter      card.Filter `json:"filter,omitempty"` // cards
	After       string      `json:"after,omitempty"`  // cards: the cursor (an ICCID)
	Limit       int         `json:"limit,omitempty"`  // cards
	Seqs        []uint64    `json:"seqs,omitempty"`   // chunks: usage chunks' log positions
}

// QueryKind names what a Query asks for.
type QueryKind string

const (
	QueryCard    QueryKind = "card"
	QueryAccount QueryKind = "account"
	QueryCards   QueryKind = "cards"
	QueryPool    QueryKind = "pool"
	// QueryChunks asks for the verdicts of usage chunks (by position).
	QueryChunks QueryKind = "chunks"
)

// Reply answers a Query.
type Reply struct {
	Found   bool              `json:"found"`
	Card    *card.View        `json:"card,omitempty"`
	Account *card.AccountView `json:"account,omitempty"`
	Pool    *card.PoolView    `json:"pool,omitempty"`
	Cards   []card.View       `json:"cards,omitempty"`
	// Chunks: the verdicts of each asked chunk the partition still keeps.
	Chunks  map[uint64]*ChunkVerdicts `json:"chunks,omitempty"`
	Now     int64                     `json:"now"`     // the partition's log time
	Applied uint64                    `json:"applied"` // the partition's applied sequence
	Error   string                    `json:"error,omitempty"`
	Timeout bool                      `json:"timeout,omitempty"` // min_position was not reached in time
}

func (p *Projector) answer(ctx context.Context, stream jetstream.Stream, pt *partition, m *nats.Msg) {
	var q Query
	var reply Reply
	if err := json.Unmarshal(m.Data, &q); err != nil {
		reply.Error = "bad query: " + err.Error()
	} else {
		wctx, cancel := context.WithTimeout(ctx, p.cfg.MaxQueryWait)
		err := pt.waitFor(wctx, stream, q.MinPosition)
		cancel()
		if err != nil {
			reply.Timeout = errors.Is(err, context.DeadlineExceeded)
			reply.Error = "waiting for position: " + err.Error()
		}
		pt.mu.Lock()
		if pt.state != nil {
			reply.Now = pt.state.Now()
			switch q.Kind {
			case QueryCard:
				v, ok := pt.state.Card(q.ID)
				reply.Card, reply.Found = &v, ok
			case QueryAccount:
				v, ok := pt.state.Account(q.ID)
				reply.Account, reply.Found = &v, ok
			case QueryPool:
				v, ok := pt.state.Pool(q.ID)
				reply.Pool, reply.Found = &v, ok
			case QueryCards:
				reply.Cards, reply.Found = pt.state.ListCards(q.Filter, q.After, max(1, min(q.Limit, 1000))), true
			case QueryChunks:
				reply.Chunks = map[uint64]*ChunkVerdicts{}
				for _, seq := range q.Seqs {
					if v, ok := pt.chunks[seq]; ok {
						reply.Chunks[seq] = v
					}
				}
				reply.Found = len(reply.Chunks) == len(q.Seqs)
			default:
				reply.Error = "unknown query kind " + string(q.Kind)
			}
		}
		reply.Applied = pt.applied
		pt.mu.Unlock()
	}
	b, _ := json.Marshal(&reply)
	_ = m.Respond(b) // the asker may have gone; nothing to do then
}

// waitFor returns when the partition has applied every message of its own
// up to the stream position pos. Positions are global to the stream, so the
// partition may have no message at pos: it asks the stream for its next
// message after what it applied, and waits only if that one is ≤ pos.
func (pt *partition) waitFor(ctx context.Context, stream jetstream.Stream, pos uint64) error {
	for {
		pt.mu.Lock()
		applied, progress := pt.applied, pt.progress
		pt.mu.Unlock()
		if applied >= pos {
			return nil
		}
		next, err := stream.GetMsg(ctx, applied+1, jetstream.WithGetMsgSubject(broker.PartitionFilter(pt.id)))
		if errors.Is(err, jetstream.ErrMsgNotFound) || (err == nil && next.Sequence > pos) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
