package api

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// BatchResult answers POST /v1/usage.
type BatchResult struct {
	BatchID    string             `json:"batch_id"`
	Received   int                `json:"received"`
	Accepted   int                `json:"accepted"`
	Duplicates int                `json:"duplicates"`
	Rejected   []*cdr.RecordError `json:"rejected"`
	Position   uint64             `json:"position"`
}

// Rejection is what the REJECTED stream keeps of a refused record.
type Rejection struct {
	Carrier    string           `json:"carrier"`
	BatchID    string           `json:"batch_id"`
	ReceivedAt int64            `json:"received_at"`
	Error      *cdr.RecordError `json:"error"`
	Record     *cdr.Record      `json:"record,omitempty"`
}

// maxDecompressed bounds a gzip body once inflated.
const maxDecompressed = 1 << 30

func (s *Server) reader(r *http.Request, body []byte) (cdr.Reader, error) {
	var in io.Reader = bytes.NewReader(body)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(in)
		if err != nil {
			return nil, problem(http.StatusBadRequest, "invalid/gzip", "malformed gzip body", err.Error())
		}
		in = io.LimitReader(zr, maxDecompressed)
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "text/csv":
		cr, err := cdr.NewCSVReader(in, 64<<10)
		if err != nil {
			return nil, problem(http.StatusBadRequest, "invalid/csv-header", "bad CSV header", err.Error())
		}
		return cr, nil
	case "application/x-ndjson", "application/jsonl":
		return cdr.NewNDJSONReader(in, 64<<10), nil
	}
	return nil, problem(http.StatusUnsupportedMediaType, "unsupported/content-type", "unsupported content type",
		"send text/csv (with a header row) or application/x-ndjson, not "+strconv.Quote(ct))
}

// postUsage validates a batch, publishes its valid records in per-partition
// chunks and answers once JetStream acknowledged every chunk. Rejected
// records are listed in the answer and kept in the REJECTED stream.
//
// Answers: 200 when every record was accepted; 422 (problem+json with the
// same counts and an errors array) when some or all were rejected: the
// accepted ones of that batch are stored all the same; 503 with Retry-After
// when the log did not store them (nothing of the batch may be assumed
// stored; a retry with the same body or Idempotency-Key adds nothing twice).
func (s *Server) postUsage(w http.ResponseWriter, r *http.Request) error {
	carrier := r.URL.Query().Get("carrier")
	if carrier == "" {
		carrier = "default"
	}
	if err := checkID("carrier", carrier); err != nil {
		return err
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		return err
	}
	rd, err := s.reader(r, body)
	if err != nil {
		return err
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		key = contentID([]byte(carrier), []byte(r.Header.Get("Content-Type")), body)
	} else {
		key = contentID([]byte(carrier), []byte(key))
	}
	res := &BatchResult{BatchID: key, Rejected: []*cdr.RecordError{}}
	now := s.clock.Now()
	byPart := make([][]cdr.Record, s.cfg.Partitions)
	var rejected []Rejection
	reject := func(e *cdr.RecordError, rec *cdr.Record) {
		res.Rejected = append(res.Rejected, e)
		rejected = append(rejected, Rejection{Carrier: carrier, BatchID: key, ReceivedAt: now, Error: e, Record: rec})
	}
	for {
		var rec cdr.Record
		err := rd.Next(&rec)
		if err == io.EOF {
			break
		}
		var re *cdr.RecordError
		if errors.As(err, &re) {
			res.Received++
			reject(re, nil)
			continue
		}
		if err != nil {
			return problem(http.StatusBadRequest, "invalid/body", "unreadable batch", err.Error())
		}
		idx := res.Received
		res.Received++
		if fe := rec.Validate(now, s.cfg.Limits); fe != nil {
			reject(&cdr.RecordError{Index: idx, Line: rd.Line(), RecordID: rec.RecordID, Field: fe.Field, Reason: fe.Reason}, &rec)
			continue
		}
		c, found := s.dir.Resolve(rec.ICCID, rec.IMSI, rec.MSISDN)
		if !found {
			field := "iccid"
			if rec.ICCID == "" {
				field = map[bool]string{true: "imsi", false: "msisdn"}[rec.IMSI != ""]
			}
			reject(&cdr.RecordError{Index: idx, Line: rd.Line(), RecordID: rec.RecordID, Field: field, Reason: "unknown card: provision it first"}, &rec)
			continue
		}
		rec.ICCID = c.ICCID
		p := broker.Partition(c.AccountID, s.cfg.Partitions)
		byPart[p] = append(byPart[p], rec)
	}
	pos, dups, err := s.publishChunks(r.Context(), carrier, key, now, byPart)
	if err != nil {
		return err
	}
	res.Position, res.Duplicates = pos, dups
	res.Accepted = res.Received - len(res.Rejected) - dups
	if len(rejected) > 0 {
		s.keepRejected(r.Context(), carrier, key, rejected)
	}
	s.metrics.records.WithLabelValues("accepted").Add(float64(res.Accepted))
	s.metrics.records.WithLabelValues("rejected").Add(float64(len(res.Rejected)))
	s.metrics.records.WithLabelValues("duplicate_chunk").Add(float64(dups))
	if len(res.Rejected) > 0 {
		p := problem(http.StatusUnprocessableEntity, "invalid/records", "records rejected",
			fmt.Sprintf("%d of %d records rejected; the %d accepted are stored", len(res.Rejected), res.Received, res.Accepted))
		p.Errors, p.BatchResult = res.Rejected, res
		return p
	}
	return ok(w, res)
}

// publishChunks publishes each partition's records in chunks and waits for
// every ack. The message id of a chunk is derived from the batch key, the
// partition and the chunk's index, so a retried batch is stored once.
func (s *Server) publishChunks(ctx context.Context, carrier, key string, now int64, byPart [][]cdr.Record) (pos uint64, dups int, err error) {
	type pending struct {
		fut jetstream.PubAckFuture
		n   int
	}
	var futs []pending
	for p, recs := range byPart {
		for i := 0; len(recs) > 0; i++ {
			n := min(len(recs), s.cfg.ChunkRecords)
			m := nats.NewMsg(broker.UsageSubject(p))
			m.Data = cdr.AppendChunk(nil, cdr.ChunkHeader{Carrier: carrier, BatchID: key, ReceivedAt: now}, recs[:n])
			m.Header.Set(jetstream.MsgIDHeader, "u-"+key+"-"+strconv.Itoa(p)+"-"+strconv.Itoa(i))
			f, err := s.js.PublishMsgAsync(m)
			if err != nil {
				return 0, 0, fmt.Errorf("%w: %v", errUnavailable, err)
			}
			futs = append(futs, pending{f, n})
			recs = recs[n:]
		}
	}
	for _, f := range futs {
		select {
		case ack := <-f.fut.Ok():
			pos = max(pos, ack.Sequence)
			if ack.Duplicate {
				dups += f.n
			}
		case err := <-f.fut.Err():
			return 0, 0, fmt.Errorf("%w: %v", errUnavailable, err)
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("%w: %v", errUnavailable, ctx.Err())
		}
	}
	return pos, dups, nil
}

// keepRejected stores refused records for audit. It is best effort after
// the answer is decided: the caller is told about every rejection anyway.
func (s *Server) keepRejected(ctx context.Context, carrier, key string, rs []Rejection) {
	for i, rj := range rs {
		b, _ := json.Marshal(rj)
		if _, err := s.publish(ctx, broker.RejectedSubject(carrier), "rej-"+key+"-"+strconv.Itoa(i), b); err != nil {
			s.log.Warn("keeping rejected record failed", zap.String("carrier", carrier), zap.Error(err))
			return
		}
	}
}
