package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// batchWriter publishes one usage batch as it is read: a partition's chunk
// goes to the log as soon as it is full, and the rejections as soon as a
// message's worth has gathered, so that a batch holds a few chunks at a
// time, not all of them, however large it is. At most window messages
// wait for their acknowledgement. Everything it holds is on its lease.
//
// A chunk's message id is the batch's key and content, the partition and
// a digest of the records it holds; a rejections message's, the key,
// content and its index. A retry of the batch therefore stores no chunk
// twice, however far the first try got (and a record in two different
// chunks counts once).
type batchWriter struct {
	s      *Server
	ctx    context.Context // the request's
	lease  *lease
	body   int64 // bytes of body (and answer) held
	header cdr.ChunkHeader
	msgKey string

	parts []cdr.ChunkBuilder
	grow  int // bytes an empty builder makes room for
	since int // records added since the lease was last checked

	inflight []inflight
	held     int64 // bytes of the messages in flight
	acks     chunkAcks
	stored   int // records in chunks the log acknowledged

	rej      []byte // the rejections message being filled: `{...,"rejections":[` and items
	rejItems int
	rejSent  int // rejections messages published
	rejLimit int
}

type inflight struct {
	fut     jetstream.PubAckFuture
	records int
	part    int // -1: a rejections message
	size    int
}

// window is how many of a batch's messages may wait for their acks.
func (w *batchWriter) window() int { return 2*len(w.parts) + 2 }

func (s *Server) newBatchWriter(ctx context.Context, l *lease, body int64, h cdr.ChunkHeader, msgKey string) *batchWriter {
	limit := 512 << 10
	if s.nc != nil && s.nc.MaxPayload() > 0 {
		limit = int(s.nc.MaxPayload() / 2)
	}
	// an empty builder makes room for its share of the body, which the
	// encoding does not exceed by much, up to a full chunk's usual size
	grow := min(int(body)/s.cfg.Partitions+int(body)/(8*s.cfg.Partitions), s.cfg.ChunkRecords*96)
	return &batchWriter{s: s, ctx: ctx, lease: l, body: body, header: h, msgKey: msgKey,
		parts: make([]cdr.ChunkBuilder, s.cfg.Partitions), grow: grow,
		acks: chunkAcks{seqs: map[int][]uint64{}}, rejLimit: limit}
}

// add encodes a valid record into its partition's chunk.
func (w *batchWriter) add(p int, rec *cdr.Record) error {
	b := &w.parts[p]
	if b.Len() == 0 {
		b.Grow(w.grow)
	}
	b.Add(rec)
	if b.Len() == w.s.cfg.ChunkRecords {
		return w.seal(p)
	}
	if w.since++; w.since == 256 {
		return w.check()
	}
	return nil
}

// check holds on the lease what the batch holds now.
func (w *batchWriter) check() error {
	w.since = 0
	n := w.body + w.held + int64(cap(w.rej))
	for i := range w.parts {
		n += int64(w.parts[i].Cap())
	}
	return w.lease.need(n)
}

// seal publishes a partition's chunk. Its message id names the batch and
// the records it holds, not its place in the batch: a retry whose valid
// records differ from the first try's (a card provisioned since, the
// clock moved on) fills its chunks differently, and a chunk named by its
// index would be taken for the first try's and dropped with records it
// never held. Records that are stored twice that way count once (the
// fold knows their ids).
func (w *batchWriter) seal(p int) error {
	b := &w.parts[p]
	sum := b.Sum()
	data, n := b.Bytes(w.header), b.Len()
	b.Reset()
	id := "u-" + w.msgKey + "-" + strconv.Itoa(p) + "-" + hex.EncodeToString(sum[:12])
	return w.publish(broker.UsageSubject(p), id, data, n, p)
}

// reject adds a rejection to the message being filled, and publishes the
// message first when the rejection would not fit in it.
func (w *batchWriter) reject(r Rejection) error {
	item, _ := json.Marshal(&r)
	if w.rejItems > 0 && len(w.rej)+len(item)+2 > w.rejLimit {
		if err := w.flushRejections(); err != nil {
			return err
		}
	}
	if w.rejItems == 0 {
		if w.rej == nil {
			w.rej = make([]byte, 0, 4096)
		}
		// a RejectedBatch, written as its items come
		c, _ := json.Marshal(w.header.Carrier)
		b, _ := json.Marshal(w.header.BatchID)
		w.rej = fmt.Appendf(w.rej[:0], `{"carrier":%s,"batch_id":%s,"received_at":%d,"rejections":[`, c, b, w.header.ReceivedAt)
	} else {
		w.rej = append(w.rej, ',')
	}
	w.rej = append(w.rej, item...)
	w.rejItems++
	if w.since++; w.since >= 256 {
		return w.check()
	}
	return nil
}

func (w *batchWriter) flushRejections() error {
	data := append(append([]byte(nil), w.rej...), ']', '}')
	w.rejItems = 0
	w.rej = w.rej[:0]
	id := "rej-" + w.msgKey + "-" + strconv.Itoa(w.rejSent)
	w.rejSent++
	return w.publish(broker.RejectedSubject(w.header.Carrier), id, data, 0, -1)
}

func (w *batchWriter) publish(subject, id string, data []byte, records, part int) error {
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, id)
	f, err := w.s.js.PublishMsgAsync(m)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	w.inflight = append(w.inflight, inflight{fut: f, records: records, part: part, size: len(data)})
	w.held += int64(len(data))
	for len(w.inflight) > w.window() {
		if err := w.waitOldest(); err != nil {
			return err
		}
	}
	return w.check()
}

// waitOldest waits for the oldest message in flight to be acknowledged.
func (w *batchWriter) waitOldest() error {
	f := w.inflight[0]
	w.inflight = w.inflight[1:]
	w.held -= int64(f.size)
	t := time.NewTimer(w.s.cfg.PublishTimeout)
	defer t.Stop()
	select {
	case ack := <-f.fut.Ok():
		if f.part < 0 {
			return nil
		}
		w.stored += f.records
		w.acks.position = max(w.acks.position, ack.Sequence)
		w.acks.seqs[f.part] = append(w.acks.seqs[f.part], ack.Sequence)
		if ack.Duplicate {
			w.acks.duplicates += f.records
		}
		return nil
	case err := <-f.fut.Err():
		return fmt.Errorf("%w: %v", errUnavailable, err)
	case <-t.C:
		return fmt.Errorf("%w: no acknowledgement within %s", errUnavailable, w.s.cfg.PublishTimeout)
	case <-w.ctx.Done():
		return fmt.Errorf("%w: %v", errUnavailable, w.ctx.Err())
	}
}

// finish publishes the partly filled chunks and the last rejections and
// waits for every acknowledgement.
func (w *batchWriter) finish() (chunkAcks, error) {
	for p := range w.parts {
		if w.parts[p].Len() > 0 {
			if err := w.seal(p); err != nil {
				return w.acks, err
			}
		}
	}
	if w.rejItems > 0 {
		if err := w.flushRejections(); err != nil {
			return w.acks, err
		}
	}
	return w.acks, w.drain()
}

// drain waits for every message in flight.
func (w *batchWriter) drain() error {
	for len(w.inflight) > 0 {
		if err := w.waitOldest(); err != nil {
			return err
		}
	}
	return nil
}

// published reports whether any of the batch went to the log.
func (w *batchWriter) published() bool {
	return w.rejSent > 0 || len(w.inflight) > 0 || w.stored > 0
}
