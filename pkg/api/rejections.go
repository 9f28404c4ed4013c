package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// RejectedBatch is one message of the REJECTED stream: the records of one
// batch that ingest refused, with why, kept for audit and re-submission.
type RejectedBatch struct {
	Carrier    string      `json:"carrier"`
	BatchID    string      `json:"batch_id"`
	ReceivedAt int64       `json:"received_at"`
	Rejections []Rejection `json:"rejections"`
}

// Rejection is one refused record. Record is absent when the line could not
// be parsed at all: such a record must be fixed at its source and sent again.
type Rejection struct {
	Error  *cdr.RecordError `json:"error"`
	Record *RecordJSON      `json:"record,omitempty"`
}

// RecordJSON is a usage record with the API's field names.
type RecordJSON struct {
	RecordID  string `json:"record_id"`
	ICCID     string `json:"iccid,omitempty"`
	IMSI      string `json:"imsi,omitempty"`
	MSISDN    string `json:"msisdn,omitempty"`
	StartTime string `json:"start_time"`
	EndTime   string `json:"end_time"`
	BytesUp   uint64 `json:"bytes_up"`
	BytesDown uint64 `json:"bytes_down"`
	Sequence  uint32 `json:"sequence,omitempty"`
	SessionID string `json:"session_id,omitempty"`
	APN       string `json:"apn,omitempty"`
	RAT       string `json:"rat,omitempty"`
	IMEI      string `json:"imei,omitempty"`
	CellID    string `json:"cell_id,omitempty"`
}

func toRecordJSON(r *cdr.Record) *RecordJSON {
	return &RecordJSON{RecordID: r.RecordID, ICCID: r.ICCID, IMSI: r.IMSI, MSISDN: r.MSISDN,
		StartTime: rfc3339(r.Start), EndTime: rfc3339(r.End), BytesUp: r.BytesUp, BytesDown: r.BytesDown,
		Sequence: r.Sequence, SessionID: r.SessionID, APN: r.APN, RAT: r.RAT, IMEI: r.IMEI, CellID: r.CellID}
}

func (j *RecordJSON) record() cdr.Record {
	parse := func(s string) int64 {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return 0
		}
		return t.Unix()
	}
	return cdr.Record{RecordID: j.RecordID, ICCID: j.ICCID, IMSI: j.IMSI, MSISDN: j.MSISDN, Start: parse(j.StartTime),
		End: parse(j.EndTime), BytesUp: j.BytesUp, BytesDown: j.BytesDown, Sequence: j.Sequence, SessionID: j.SessionID,
		APN: j.APN, RAT: j.RAT, IMEI: j.IMEI, CellID: j.CellID}
}

// RejectionView is one entry of GET /v1/rejections.
type RejectionView struct {
	ID          string           `json:"id"` // <stream position>.<index>
	Carrier     string           `json:"carrier"`
	BatchID     string           `json:"batch_id"`
	ReceivedAt  string           `json:"received_at"`
	Error       *cdr.RecordError `json:"error"`
	Record      *RecordJSON      `json:"record,omitempty"`
	Resubmitted string           `json:"resubmitted,omitempty"` // the re-submission's batch id
}

// rejectionsFrom is where a read of the REJECTED stream starts: at a
// time, or after an entry (a page's last id).
type rejectionsFrom struct {
	since      time.Time
	afterSeq   uint64 // 0: from since (or the start)
	afterIndex int
}

// parseRejectionID reads an entry id, <stream position>.<index>.
func parseRejectionID(id string) (seq uint64, idx int, ok bool) {
	a, b, found := strings.Cut(id, ".")
	if !found {
		return 0, 0, false
	}
	seq, err1 := strconv.ParseUint(a, 10, 64)
	idx, err2 := strconv.Atoi(b)
	return seq, idx, err1 == nil && err2 == nil && seq > 0 && idx >= 0
}

// readRejections reads the REJECTED stream for carrier ("" for all) from
// from, calling f for each entry until f returns false.
func (s *Server) readRejections(ctx context.Context, carrier string, from rejectionsFrom, f func(RejectionView) bool) error {
	filter := broker.RejectedSubject("*")
	if carrier != "" {
		filter = broker.RejectedSubject(carrier)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}}
	switch {
	case from.afterSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from.afterSeq
	case !from.since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &from.since
	}
	res := s.resolvedLookup()
	return s.scan(ctx, broker.StreamRejected, cfg, func(m jetstream.Msg) (bool, error) {
		meta, err := m.Metadata()
		if err != nil {
			return false, err
		}
		var rb RejectedBatch
		if err := json.Unmarshal(m.Data(), &rb); err != nil {
			return true, nil // not ours to read; the stream keeps it
		}
		for i, rj := range rb.Rejections {
			if meta.Sequence.Stream == from.afterSeq && i <= from.afterIndex {
				continue // the previous page's
			}
			v := RejectionView{ID: fmt.Sprintf("%d.%d", meta.Sequence.Stream, i), Carrier: rb.Carrier, BatchID: rb.BatchID,
				ReceivedAt: rfc3339(rb.ReceivedAt), Error: rj.Error, Record: rj.Record}
			v.Resubmitted = res(ctx, v.ID)
			if !f(v) {
				return false, nil
			}
		}
		return true, nil
	})
}

// resolvedLookups is how many rejections a read looks up one by one in
// the resolved bucket before it reads the bucket's keys once instead: a
// page asks a few, a summary or a long scan many.
const resolvedLookups = 64

// resolvedLookup returns how one read finds whether a rejection was
// re-submitted (the re-submission's batch id, or ""): by a get per
// rejection for the first few, then from every key of the bucket, read
// once. The value of a key read that way is fetched when it is found.
func (s *Server) resolvedLookup() func(ctx context.Context, id string) string {
	if s.resolved == nil {
		return func(context.Context, string) string { return "" }
	}
	asked := 0
	var keys map[string]bool
	return func(ctx context.Context, id string) string {
		if asked++; asked > resolvedLookups && keys == nil {
			keys = map[string]bool{}
			if lister, err := s.resolved.ListKeys(ctx); err == nil {
				for k := range lister.Keys() {
					keys[k] = true
				}
			} else if !errors.Is(err, jetstream.ErrNoKeysFound) {
				keys = nil // ask one by one
			}
		}
		if keys != nil && !keys[id] {
			return ""
		}
		if e, err := s.resolved.Get(ctx, id); err == nil {
			return string(e.Value())
		}
		return ""
	}
}

// scan reads a stream's messages (as cfg filters them) to its end through
// an ordered consumer, until f says stop or fails.
func (s *Server) scan(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig, f func(jetstream.Msg) (bool, error)) error {
	cons, err := s.js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return err
	}
	for {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if more, err := f(m); err != nil || !more {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

// listRejections answers GET /v1/rejections?carrier=&since=&batch_id=&pending=true&limit=.
func (s *Server) listRejections(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	carrier := q.Get("carrier")
	if carrier != "" {
		if err := checkID("carrier", carrier); err != nil {
			return err
		}
	}
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return invalid("since", "not an RFC 3339 time with offset")
		}
		since = t
	}
	limit, err := queryLimit(q, 1000, 10000)
	if err != nil {
		return err
	}
	from := rejectionsFrom{since: since}
	if v := q.Get("after"); v != "" {
		seq, idx, good := parseRejectionID(v)
		if !good {
			return invalid("after", "an entry id (<position>.<index>), the next_after of the previous page")
		}
		from.afterSeq, from.afterIndex = seq, idx
	}
	pending := q.Get("pending") == "true"
	batch, field := q.Get("batch_id"), q.Get("field")
	out := []RejectionView{}
	_, limited := principal(r).Accounts(ScopeRead)
	more := false
	err = s.readRejections(r.Context(), carrier, from, func(v RejectionView) bool {
		if limited && !s.rejectionVisible(r, v) {
			return true
		}
		if (!pending || v.Resubmitted == "") && (batch == "" || v.BatchID == batch) && (field == "" || fieldOf(v) == field) {
			if len(out) == limit {
				more = true // one more than the page: there is a next
				return false
			}
			out = append(out, v)
		}
		return true
	})
	if err != nil {
		return err
	}
	resp := map[string]any{"rejections": out}
	if more {
		resp["next_after"] = out[len(out)-1].ID
	}
	return ok(w, resp)
}

// fieldOf is the field a rejection names, as the rejected-records metric
// labels it ("record": the record as a whole).
func fieldOf(v RejectionView) string {
	if v.Error == nil {
		return "record"
	}
	return rejectedField(v.Error.Field)
}

// SummaryScanLimit bounds the entries one rejections summary reads, and
// SummaryWindow how far back it may start.
const (
	SummaryScanLimit = 200_000
	SummaryWindow    = 7 * 24 * time.Hour
)

// rejectionsSummary answers GET /v1/rejections/summary?since=: the
// rejections since then (at most SummaryWindow ago) counted by carrier
// and field, pending (not re-submitted) and in all. It reads at most
// SummaryScanLimit entries and says so when it stopped short (complete:
// false).
func (s *Server) rejectionsSummary(w http.ResponseWriter, r *http.Request) error {
	since := time.Now().Add(-24 * time.Hour) // the stream keeps its own (wall) time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return invalid("since", "not an RFC 3339 time with offset")
		}
		if time.Since(t) > SummaryWindow {
			return invalid("since", "at most 7 days ago (list older rejections with GET /v1/rejections?since=)")
		}
		since = t
	}
	type key struct{ carrier, field string }
	type count struct {
		Carrier string `json:"carrier"`
		Field   string `json:"field"`
		Total   int    `json:"total"`
		Pending int    `json:"pending"`
	}
	counts := map[key]*count{}
	_, limited := principal(r).Accounts(ScopeRead)
	read, complete := 0, true
	err := s.readRejections(r.Context(), "", rejectionsFrom{since: since}, func(v RejectionView) bool {
		if read++; read > SummaryScanLimit {
			complete = false
			return false
		}
		if limited && !s.rejectionVisible(r, v) {
			return true
		}
		k := key{v.Carrier, fieldOf(v)}
		c := counts[k]
		if c == nil {
			c = &count{Carrier: k.carrier, Field: k.field}
			counts[k] = c
		}
		c.Total++
		if v.Resubmitted == "" {
			c.Pending++
		}
		return true
	})
	if err != nil {
		return err
	}
	out := make([]*count, 0, len(counts))
	for _, c := range counts {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Carrier != out[j].Carrier {
			return out[i].Carrier < out[j].Carrier
		}
		return out[i].Field < out[j].Field
	})
	return ok(w, map[string]any{"since": since.UTC().Format(time.RFC3339), "counts": out, "complete": complete})
}

// rejectionVisible reports whether an account's token may see a
// rejection: one of a card of its account. The rejection of a record
// that names no known card (or could not be read) belongs to no account:
// it is the carrier's and the admin's.
func (s *Server) rejectionVisible(r *http.Request, v RejectionView) bool {
	if v.Record == nil {
		return false
	}
	c, found := s.dir.Resolve(v.Record.ICCID, v.Record.IMSI, v.Record.MSISDN)
	return found && principal(r).May(ScopeRead, c.AccountID)
}

type resubmitBody struct {
	IDs []string `json:"ids"`
	All bool     `json:"all"`
}

// ResubmitResult answers POST /v1/rejections/resubmit.
type ResubmitResult struct {
	BatchID          string             `json:"batch_id"`
	Accepted         int                `json:"accepted"`
	Duplicates       int                `json:"duplicates"`
	StillRejected    []*cdr.RecordError `json:"still_rejected"`
	NotResubmittable []string           `json:"not_resubmittable"` // unparsed lines, already re-submitted, or unknown ids
	Position         uint64             `json:"position"`
}

// resubmit re-validates rejected records of the caller's carrier (the
// listed ids, or all pending ones) after their cause is fixed, for example
// the card was provisioned, and publishes the ones now valid. Each is
// marked re-submitted; a record id that counted before still counts once.
func (s *Server) resubmit(w http.ResponseWriter, r *http.Request) error {
	carrier, err := s.carrierOf(r, principal(r))
	if err != nil {
		return err
	}
	var b resubmitBody
	if err := decodeBody(r, &b); err != nil {
		return err
	}
	if !b.All && len(b.IDs) == 0 {
		return invalid("ids", "name the rejections to re-submit, or send {\"all\": true}")
	}
	want := map[string]bool{}
	for _, id := range b.IDs {
		want[id] = true
	}
	var picked []RejectionView
	err = s.readRejections(r.Context(), carrier, rejectionsFrom{}, func(v RejectionView) bool {
		if b.All || want[v.ID] {
			picked = append(picked, v)
			delete(want, v.ID)
		}
		return true
	})
	if err != nil {
		return err
	}
	res := ResubmitResult{StillRejected: []*cdr.RecordError{}, NotResubmittable: []string{}}
	for id := range want {
		res.NotResubmittable = append(res.NotResubmittable, id)
	}
	ids := make([]string, 0, len(picked))
	for _, v := range picked {
		ids = append(ids, v.ID)
	}
	sort.Strings(ids)
	res.BatchID = "resubmit-" + contentID([]byte(carrier), []byte(strings.Join(ids, ",")))
	now := s.clock.Now()
	l := s.budget.lease()
	defer l.close()
	bw := s.newBatchWriter(r.Context(), l, 0, cdr.ChunkHeader{Carrier: carrier, BatchID: res.BatchID, ReceivedAt: now}, res.BatchID)
	var valid []string
	for i, v := range picked {
		if v.Record == nil || v.Resubmitted != "" {
			if !b.All {
				res.NotResubmittable = append(res.NotResubmittable, v.ID)
			}
			continue
		}
		rec := v.Record.record()
		p, re := s.route(&rec, carrier, now, i, v.Error.Line)
		if re != nil {
			re.Reason = v.ID + ": " + re.Reason
			res.StillRejected = append(res.StillRejected, re)
			continue
		}
		if err := bw.add(p, &rec); err != nil {
			return err
		}
		valid = append(valid, v.ID)
	}
	sort.Strings(res.NotResubmittable)
	acks, err := bw.finish()
	if err != nil {
		return err
	}
	res.Position, res.Duplicates = acks.position, acks.duplicates
	res.Accepted = len(valid) - acks.duplicates
	if s.resolved != nil {
		for _, id := range valid {
			if _, err := s.resolved.Put(r.Context(), id, []byte(res.BatchID)); err != nil {
				return fmt.Errorf("%w: %v", errUnavailable, err)
			}
		}
	}
	return ok(w, res)
}
