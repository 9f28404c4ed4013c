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
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// BatchResult answers POST /v1/usage.
type BatchResult struct {
	BatchID  string `json:"batch_id"`
	Carrier  string `json:"carrier"`
	Received int    `json:"received"`
	// Stored is how many records of the batch are in the log, durable
	// whatever follows (written by this request or by an earlier try of
	// the same batch: a retry stores nothing twice).
	Stored int `json:"stored"`
	// Verdicts is "final" when the projector's verdicts on the records
	// are in Accepted, Duplicates and Projected, and "pending" when they
	// were not known within the wait (or not asked for, ?wait=false):
	// then Accepted and Duplicates are absent, rather than numbers that
	// look final and are not.
	Verdicts   string             `json:"verdicts"`
	Accepted   *int               `json:"accepted,omitempty"`   // counted (late ones too)
	Duplicates *int               `json:"duplicates,omitempty"` // record ids counted before
	Rejected   []*cdr.RecordError `json:"rejected"`             // the first maxAnswerRejections
	// RejectedCount is how many were rejected; past maxAnswerRejections
	// the answer lists the first ones only (RejectedTruncated), and GET
	// /v1/rejections?batch_id= lists every one.
	RejectedCount     int    `json:"rejected_count"`
	RejectedTruncated bool   `json:"rejected_truncated,omitempty"`
	Position          uint64 `json:"position"`
	// Projected is what the projector made of the stored records, when
	// the verdicts are final.
	Projected *query.ChunkVerdicts `json:"projected,omitempty"`
}

// maxAnswerRejections is how many rejections a batch's answer lists: the
// answer stays small enough to send and to keep for the batch's retries.
const maxAnswerRejections = 1000

// readBody reads a request's body up to max bytes, holding it on the
// batch's lease: into a buffer of the declared length when there is one
// (io.ReadAll doubles its way there), else taking the lease as it reads.
func readBody(w http.ResponseWriter, r *http.Request, max int64, l *lease) ([]byte, error) {
	in := http.MaxBytesReader(w, r.Body, max)
	if r.ContentLength <= 0 || r.ContentLength > max {
		return io.ReadAll(&leaseReader{r: in, l: l})
	}
	if err := l.need(r.ContentLength + bytes.MinRead); err != nil {
		return nil, err
	}
	buf := bytes.NewBuffer(make([]byte, 0, r.ContentLength+bytes.MinRead)) // room to read EOF without growing
	_, err := buf.ReadFrom(in)
	return buf.Bytes(), err
}

// errDecompressedTooLarge ends a gzip body past its limit.
var errDecompressedTooLarge = errors.New("decompressed body too large")

// capReader fails, rather than truncates, past n bytes.
type capReader struct {
	r io.Reader
	n int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errDecompressedTooLarge
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

func (s *Server) reader(r *http.Request, body []byte) (cdr.Reader, error) {
	var in io.Reader = bytes.NewReader(body)
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(in)
		if err != nil {
			return nil, problem(http.StatusBadRequest, "invalid/gzip", "malformed gzip body", err.Error())
		}
		in = &capReader{r: zr, n: s.cfg.Batch.MaxDecompressedBytes}
	default:
		return nil, problem(http.StatusUnsupportedMediaType, "unsupported/content-encoding", "unsupported content encoding",
			"send gzip or no Content-Encoding, not "+strconv.Quote(enc))
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var rd cdr.Reader
	var err error
	switch ct {
	case "text/csv":
		rd, err = cdr.NewCSVReader(in, s.cfg.Batch.MaxLineBytes)
	case "application/x-ndjson", "application/jsonl":
		rd = cdr.NewNDJSONReader(in, s.cfg.Batch.MaxLineBytes)
	case "application/json":
		rd, err = cdr.NewJSONArrayReader(in, s.cfg.Batch.MaxLineBytes)
	default:
		return nil, problem(http.StatusUnsupportedMediaType, "unsupported/content-type", "unsupported content type",
			"send text/csv (with a header row), application/x-ndjson or application/json (an array), not "+strconv.Quote(ct))
	}
	if err != nil {
		return nil, s.batchProblem(err)
	}
	return rd, nil
}

// batchProblem names the limit or fault that ended a batch.
func (s *Server) batchProblem(err error) error {
	if errors.Is(err, errDecompressedTooLarge) {
		return problem(http.StatusRequestEntityTooLarge, "limit/decompressed-size", "decompressed body too large",
			fmt.Sprintf("the gzip body inflates past the limit of %d bytes", s.cfg.Batch.MaxDecompressedBytes))
	}
	var be *cdr.BatchError
	if errors.As(err, &be) {
		if be.LineTooLong {
			return problem(http.StatusBadRequest, "limit/line-length", "line too long",
				be.Reason+fmt.Sprintf(" (limit %d bytes)", s.cfg.Batch.MaxLineBytes))
		}
		return problem(http.StatusBadRequest, "invalid/body", "unreadable batch", be.Reason)
	}
	return err
}

// postUsage validates a batch, publishes its valid records in per-partition
// chunks and its rejected records to the REJECTED stream, and answers once
// JetStream acknowledged all of them.
//
// Answers: 200 when every record was accepted; 422 (problem+json with the
// same counts and an errors array) when some or all were rejected: the
// accepted ones of that batch are stored all the same; 400/413 when the
// batch as a whole is unreadable or over a limit (what was read before the
// fault is stored, and the answer says how many: see partly); 503 with
// Retry-After when the log did not store it (a retry with the same body or
// Idempotency-Key adds nothing twice). A retried batch gets the first answer
// again (header Idempotent-Replayed: true) for a day.
func (s *Server) postUsage(w http.ResponseWriter, r *http.Request) error {
	carrier, err := s.carrierOf(r, principal(r))
	if err != nil {
		return err
	}
	l := s.budget.lease()
	defer l.close()
	body, err := readBody(w, r, s.cfg.Batch.MaxBodyBytes, l)
	if err != nil {
		return err
	}
	content := contentID([]byte(carrier), []byte(r.Header.Get("Content-Type")), []byte(r.Header.Get("Content-Encoding")), body)
	key := content
	if k := r.Header.Get("Idempotency-Key"); k != "" {
		key = contentID([]byte(carrier), []byte("key"), []byte(k))
	}
	if done, err := s.reserve(w, r, key, content); done || err != nil {
		return err
	}
	rd, err := s.reader(r, body)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	res := &BatchResult{BatchID: key, Carrier: carrier, Rejected: []*cdr.RecordError{}, Verdicts: "pending"}
	// message ids from the key and the body: a body the key's reservation
	// did not cover (no bucket to reserve in) is never taken for another's
	bw := s.newBatchWriter(r.Context(), l, int64(cap(body)), cdr.ChunkHeader{Carrier: carrier, BatchID: key, ReceivedAt: now},
		contentID([]byte(key), []byte(content)))
	if err := s.readBatch(rd, bw, res, carrier, now); err != nil {
		return s.partly(bw, res, err)
	}
	acks, err := bw.finish()
	if err != nil {
		return err
	}
	res.Position = acks.position
	res.Stored = res.Received - res.RejectedCount
	if r.URL.Query().Get("wait") != "false" {
		vctx, cancel := context.WithTimeout(r.Context(), s.cfg.VerdictWait)
		res.Projected = s.projected(vctx, acks.seqs)
		cancel()
	}
	if p := res.Projected; p != nil {
		accepted, dups := p.Accepted+p.Late, p.Duplicate
		res.Verdicts, res.Accepted, res.Duplicates = "final", &accepted, &dups
	}
	s.intake.accepted.Add(int64(res.Stored))
	s.intake.rejected.Add(int64(res.RejectedCount))
	s.metrics.records.WithLabelValues(carrier, "accepted").Add(float64(res.Stored))
	s.metrics.records.WithLabelValues(carrier, "rejected").Add(float64(res.RejectedCount))
	s.metrics.records.WithLabelValues(carrier, "duplicate_chunk").Add(float64(acks.duplicates))
	status, answer := http.StatusOK, any(res)
	ctype := "application/json"
	if res.RejectedCount > 0 {
		detail := fmt.Sprintf("%d of %d records rejected; the others are stored", res.RejectedCount, res.Received)
		if res.RejectedTruncated {
			detail += fmt.Sprintf("; the first %d rejections are listed here, every one at GET /v1/rejections?batch_id=%s", maxAnswerRejections, key)
		}
		p := problem(http.StatusUnprocessableEntity, "invalid/records", "records rejected", detail)
		p.Errors, p.BatchResult = res.Rejected, res
		status, answer, ctype = p.Status, p, "application/problem+json"
	}
	body = encodeJSON(answer)
	if res.Verdicts == "final" {
		// a pending answer is not kept: a retry asks the projector again
		s.remember(key, content, status, ctype, body)
	}
	writeRaw(w, status, ctype, body)
	return nil
}

// readBatch reads a batch's records into the writer, and the answer's
// counts and first rejections into res. It stops at the first fault of
// the batch as a whole (unreadable, over a limit, the log or the memory
// budget not keeping up).
func (s *Server) readBatch(rd cdr.Reader, bw *batchWriter, res *BatchResult, carrier string, now int64) error {
	var rec cdr.Record
	for {
		err := rd.Next(&rec)
		if err == io.EOF {
			return nil
		}
		var re *cdr.RecordError
		if err != nil && !errors.As(err, &re) {
			return s.batchProblem(err)
		}
		// every record counts towards the limit, a malformed one too
		if res.Received++; res.Received > s.cfg.Batch.MaxRecords {
			res.Received--
			return problem(http.StatusRequestEntityTooLarge, "limit/records", "too many records",
				fmt.Sprintf("a batch holds at most %d records: split it", s.cfg.Batch.MaxRecords))
		}
		var rj Rejection
		if re != nil {
			rj = Rejection{Error: re}
		} else if p, re := s.route(&rec, carrier, now, res.Received-1, rd.Line()); re != nil {
			rj = Rejection{Error: re, Record: toRecordJSON(&rec)}
		} else {
			if err := bw.add(p, &rec); err != nil {
				return err
			}
			s.metrics.delay.Observe(float64(max(0, now-rec.End)))
			continue
		}
		s.metrics.rejected.WithLabelValues(carrier, rejectedField(rj.Error.Field)).Inc()
		if res.RejectedCount++; len(res.Rejected) < maxAnswerRejections {
			res.Rejected = append(res.Rejected, rj.Error)
		} else {
			res.RejectedTruncated = true
		}
		if err := bw.reject(rj); err != nil {
			return err
		}
	}
}

// partly answers a batch that ended at a fault after part of it may have
// gone to the log: it waits for what is in flight, so that the answer can
// say how many records are stored (they count once when the batch, fixed,
// is sent again), and answers the fault.
func (s *Server) partly(bw *batchWriter, res *BatchResult, err error) error {
	if bw.rejItems > 0 {
		_ = bw.flushRejections() // the rejections the answer lists are kept too; a failure shows in drain
	}
	if !bw.published() {
		return err
	}
	if derr := bw.drain(); derr != nil {
		return derr
	}
	res.Stored, res.Position = bw.stored, bw.acks.position
	var p *Problem
	var rp *retryProblem
	switch {
	case errors.As(err, &rp):
		p = rp.Problem
		p.Detail += fmt.Sprintf("; %d records read before it are stored: retry the same batch (or Idempotency-Key), they count once", res.Stored)
	case errors.As(err, &p):
		// the same body would end the same way: the fixed batch is
		// another body, under a new Idempotency-Key
		p.Detail += fmt.Sprintf("; %d records read before it are stored and count once if sent again: send the fixed batch (with a new Idempotency-Key)", res.Stored)
	default:
		return err
	}
	p.BatchResult = res // with the rejections read so far (kept for audit too)
	return err
}

// route validates a record, names its card by ICCID and returns its
// partition, or the rejection when the record is not valid, its card
// unknown, or the card another carrier's: a carrier counts usage only on
// its own cards.
func (s *Server) route(rec *cdr.Record, carrier string, now int64, idx, line int) (int, *cdr.RecordError) {
	if fe := rec.Validate(now, s.cfg.Limits); fe != nil {
		return 0, &cdr.RecordError{Index: idx, Line: line, RecordID: rec.RecordID, Field: fe.Field, Reason: fe.Reason}
	}
	iccid, acct, cardCarrier, found := s.dir.Route(rec.ICCID, rec.IMSI, rec.MSISDN)
	field := "iccid"
	if rec.ICCID == "" {
		field = map[bool]string{true: "imsi", false: "msisdn"}[rec.IMSI != ""]
	}
	if !found {
		return 0, &cdr.RecordError{Index: idx, Line: line, RecordID: rec.RecordID, Field: field, Reason: "unknown card: provision it first"}
	}
	if cardCarrier != carrier {
		// said as "not this carrier's": which carrier it is, is not this one's to know
		return 0, &cdr.RecordError{Index: idx, Line: line, RecordID: rec.RecordID, Field: field, Reason: "the card is not one of carrier " + carrier + "'s cards"}
	}
	rec.ICCID = iccid
	return broker.PartitionOfHash(acct, s.cfg.Partitions), nil
}

// storedAnswer is a batch key's entry: the body it was reserved for, and
// once published, the first answer (Status 0 until then).
type storedAnswer struct {
	Content string `json:"content"`
	Status  int    `json:"status,omitempty"`
	Type    string `json:"content_type,omitempty"`
	Body    []byte `json:"body,omitempty"`
}

// reserve claims a batch key for this body before anything is published,
// or answers a retry: with the first answer when there is one (done), or
// 422 when the key was used for another body. A retry of a batch whose
// first try did not finish publishes again (the message ids make that
// harmless). Without the bucket (down), nothing is published: 503.
func (s *Server) reserve(w http.ResponseWriter, r *http.Request, key, content string) (done bool, err error) {
	if s.batches == nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PublishTimeout)
	defer cancel()
	b, _ := json.Marshal(storedAnswer{Content: content})
	if _, err := s.batches.Create(ctx, key, b); err == nil {
		return false, nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("%w: reserving the batch key: %v", errUnavailable, err)
	}
	e, err := s.batches.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("%w: reading the batch key: %v", errUnavailable, err)
	}
	var a storedAnswer
	if err := json.Unmarshal(e.Value(), &a); err != nil {
		return false, fmt.Errorf("batch key %s: %w", key, err)
	}
	switch {
	case a.Content != "" && a.Content != content:
		return false, problem(http.StatusUnprocessableEntity, "invalid/idempotency-key-reused", "Idempotency-Key reused",
			"this Idempotency-Key was used for another body in the last day; use a new key for a new batch")
	case a.Status == 0:
		return false, nil // reserved by a try that did not finish, or one still running
	}
	w.Header().Set("Idempotent-Replayed", "true")
	writeRaw(w, a.Status, a.Type, a.Body)
	return true, nil
}

// remember keeps a batch's answer for its retries. Best effort: without
// it a retry still adds nothing (the chunks' message ids and the
// projector's record dedupe see to that), it only reads differently.
func (s *Server) remember(key, content string, status int, ctype string, body []byte) {
	if s.batches == nil {
		return
	}
	b, _ := json.Marshal(storedAnswer{Content: content, Status: status, Type: ctype, Body: body})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.batches.Put(ctx, key, b); err != nil {
		s.log.Warn("keeping the batch answer failed", zap.String("batch_id", key), zap.Error(err))
	}
}

type chunkAcks struct {
	position   uint64
	duplicates int
	seqs       map[int][]uint64 // partition -> chunk positions
}

// projected waits for the projector to fold a batch's chunks and sums its
// verdicts. It returns nil when a partition does not answer in time or no
// longer keeps a chunk's verdicts.
func (s *Server) projected(ctx context.Context, seqs map[int][]uint64) *query.ChunkVerdicts {
	total := &query.ChunkVerdicts{}
	for p, ss := range seqs {
		var top uint64
		for _, q := range ss {
			top = max(top, q)
		}
		reply, err := s.query(ctx, p, query.Request{Kind: query.KindChunks, Seqs: ss, MinPosition: top})
		if err != nil || !reply.Found {
			return nil
		}
		for _, v := range reply.Chunks {
			total.Sum(v)
		}
	}
	return total
}

// rejectedField is a rejection's field as a metric label: one of the
// record's fields, or "record" (a label never takes what a client wrote).
func rejectedField(f string) string {
	if slices.Contains(cdr.Fields, f) || f == "carrier" {
		return f
	}
	return "record"
}
