package projector

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// busy answers a query when too many are being answered: ask again.
func (p *Projector) busy(m *nats.Msg) {
	b, _ := json.Marshal(&query.Reply{Timeout: true, Error: "the projector is answering too many queries at once"})
	_ = m.Respond(b)
}

func (p *Projector) answer(ctx context.Context, pt *partition, m *nats.Msg) {
	var q query.Request
	var reply query.Reply
	pt.mu.Lock()
	restoring := !pt.ready || pt.lease == nil || !pt.lease.Valid() // a late renewal: another may hold it soon
	pt.mu.Unlock()
	if err := json.Unmarshal(m.Data, &q); err != nil {
		reply.Error = "bad query: " + err.Error()
	} else if restoring {
		reply.Restoring = true
	} else {
		wctx, cancel := context.WithTimeout(ctx, p.cfg.MaxQueryWait)
		err := pt.waitFor(wctx, p.js, q.MinPosition)
		cancel()
		if err != nil {
			reply.Timeout = errors.Is(err, context.DeadlineExceeded)
			reply.Error = "waiting for position: " + err.Error()
		}
		pt.mu.Lock()
		reply.Restoring = !pt.ready
		if pt.state != nil && pt.ready {
			reply.Now = pt.state.Now()
			switch q.Kind {
			case query.KindCard:
				v, ok := pt.state.Card(q.ID)
				reply.Card, reply.Found = &v, ok
			case query.KindAccount:
				v, ok := pt.state.Account(q.ID)
				reply.Account, reply.Found = &v, ok
				reply.Pools = pt.state.AccountPools(q.ID)
			case query.KindPool:
				v, ok := pt.state.Pool(q.ID)
				reply.Pool, reply.Found = &v, ok
			case query.KindCards:
				reply.Cards, reply.Found = pt.state.ListCards(q.Filter, q.After, max(1, min(q.Limit, 1000))), true
			case query.KindCensus:
				reply.Census, reply.Found = pt.census, pt.census != nil
			case query.KindChunks:
				reply.Chunks, reply.Found = pt.chunks.pick(q.Seqs)
			case query.KindInputs:
				reply.Inputs, reply.Found = pt.inputs.pick(q.Seqs)
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
func (pt *partition) waitFor(ctx context.Context, js jetstream.JetStream, pos uint64) error {
	var stream jetstream.Stream
	for {
		pt.mu.Lock()
		applied, progress := pt.applied, pt.progress
		pt.mu.Unlock()
		if applied >= pos {
			return nil
		}
		if stream == nil {
			var err error
			if stream, err = js.Stream(ctx, broker.StreamMeter); err != nil {
				return err
			}
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
