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

// CardQuery asks for a card's state over NATS request/reply.
type CardQuery struct {
	ICCID       string `json:"iccid"`
	MinPosition uint64 `json:"min_position,omitempty"`
}

// CardReply answers a CardQuery.
type CardReply struct {
	Found   bool      `json:"found"`
	Card    card.View `json:"card"`
	Now     int64     `json:"now"`     // the partition's log time
	Applied uint64    `json:"applied"` // the partition's applied sequence
	Error   string    `json:"error,omitempty"`
	Timeout bool      `json:"timeout,omitempty"` // min_position was not reached in time
}

func (p *Projector) answer(ctx context.Context, stream jetstream.Stream, pt *partition, m *nats.Msg) {
	var q CardQuery
	var reply CardReply
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
			reply.Card, reply.Found = pt.state.Card(q.ICCID)
			reply.Now = pt.state.Now()
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
