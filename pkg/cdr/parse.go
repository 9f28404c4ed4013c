package cdr

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// RecordError names one rejected record of a batch: its 0-based index, its
// 1-based line in the input, its record id when known, the field and why.
type RecordError struct {
	Index    int    `json:"index"`
	Line     int    `json:"line"`
	RecordID string `json:"record_id,omitempty"`
	Field    string `json:"field"`
	Reason   string `json:"reason"`
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("record %d (line %d, id %q): %s: %s", e.Index, e.Line, e.RecordID, e.Field, e.Reason)
}

// BatchError is a fault of the whole input (a bad header, a line over the
// limit, a broken stream): nothing after it can be read.
type BatchError struct {
	Reason      string
	LineTooLong bool  // a line (or JSON array element) is over the limit
	Err         error // the underlying read error, if any
}

func (e *BatchError) Error() string { return e.Reason }

// Unwrap returns the read error behind the fault.
func (e *BatchError) Unwrap() error { return e.Err }

// Reader yields the records of a batch one by one. Next fills rec and
// returns nil, or a *RecordError for a record that is rejected (reading can
// go on), or io.EOF at the end, or another error that ends the batch.
type Reader interface {
	Next(rec *Record) error
	// Line is the 1-based input line of the record Next returned last.
	Line() int
}

// Fields are the column and field names of a usage record, as in API.md.
var Fields = []string{
	"record_id", "iccid", "imsi", "msisdn", "start_time", "end_time", "bytes_up", "bytes_down",
	"sequence", "session_id", "apn", "rat", "imei", "cell_id",
}

const (
	fRecordID = iota
	fICCID
	fIMSI
	fMSISDN
	fStart
	fEnd
	fBytesUp
	fBytesDown
	fSequence
	fSessionID
	fAPN
	fRAT
	fIMEI
	fCellID
	nFields
)

var fieldIndex = func() map[string]int {
	m := make(map[string]int, len(Fields))
	for i, f := range Fields {
		m[f] = i
	}
	return m
}()

// setField parses one textual value into rec. It returns the reason when the
// value is not valid for the field.
func setField(rec *Record, f int, v string) string {
	switch f {
	case fRecordID:
		rec.RecordID = v
	case fICCID:
		rec.ICCID = v
	case fIMSI:
		rec.IMSI = v
	case fMSISDN:
		rec.MSISDN = v
	case fStart, fEnd:
		if v == "" {
			return ""
		}
		u, ok := parseTime(v)
		if !ok {
			return "not an RFC 3339 time with offset"
		}
		setTime(rec, f, u)
	case fBytesUp, fBytesDown:
		if v == "" {
			return "required"
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return "not a non-negative integer"
		}
		if f == fBytesUp {
			rec.BytesUp = n
		} else {
			rec.BytesDown = n
		}
	case fSequence:
		if v == "" {
			return ""
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return "not a non-negative integer"
		}
		rec.Sequence = uint32(n)
	case fSessionID:
		rec.SessionID = v
	case fAPN:
		rec.APN = v
	case fRAT:
		rec.RAT = v
	case fIMEI:
		rec.IMEI = v
	case fCellID:
		rec.CellID = v
	}
	return ""
}

// setTime sets the start or end of a record, as f names.
func setTime(rec *Record, f int, unix int64) {
	if f == fStart {
		rec.Start = unix
	} else {
		rec.End = unix
	}
}

// lineLimiter fails a read once a line passes max bytes, before anything
// holds the line.
type lineLimiter struct {
	r         io.Reader
	max, n    int // the limit; bytes of the current line so far
	line      int
	exhausted error
}

func (l *lineLimiter) Read(p []byte) (int, error) {
	if l.exhausted != nil {
		return 0, l.exhausted
	}
	n, err := l.r.Read(p)
	for i := 0; i < n; {
		j := bytes.IndexByte(p[i:n], '\n')
		if j < 0 {
			l.n += n - i
			break
		}
		if l.n+j > l.max {
			l.n += j
			break
		}
		l.n, l.line, i = 0, l.line+1, i+j+1
	}
	if l.n > l.max {
		l.exhausted = &BatchError{Reason: fmt.Sprintf("line %d is longer than the limit of %d bytes", l.line, l.max), LineTooLong: true}
		return 0, l.exhausted
	}
	return n, err
}

// CSVReader reads CSV with a header row; columns may come in any order.
// Unknown columns are refused when the header is read.
type CSVReader struct {
	r       *csv.Reader
	line    int
	cols    []int // field index of each column
	index   int
	maxLine int
}

// NewCSVReader reads the header row. maxLine bounds a line's length in bytes
// (0: no bound).
func NewCSVReader(in io.Reader, maxLine int) (*CSVReader, error) {
	if maxLine > 0 {
		// lines are held to the limit as they are read, the header too:
		// encoding/csv would read a whole line into memory first (a gzip
		// of one 1 GiB line once cost gigabytes)
		in = &lineLimiter{r: in, max: maxLine, line: 1}
	}
	r := csv.NewReader(in)
	r.ReuseRecord = true
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err == io.EOF {
		return nil, &BatchError{Reason: "empty body: expected a CSV header row"}
	}
	var be *BatchError
	if errors.As(err, &be) {
		return nil, &BatchError{Reason: "CSV header: " + be.Reason, LineTooLong: be.LineTooLong}
	}
	if err != nil {
		return nil, &BatchError{Reason: "CSV header: " + err.Error(), Err: err}
	}
	cols := make([]int, len(header))
	seen := make([]bool, nFields)
	var unknown []string
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		f, ok := fieldIndex[h]
		if !ok {
			if len(unknown) < 10 { // an answer that stays short whatever the header
				if len(h) > 64 {
					h = h[:64] + "…"
				}
				unknown = append(unknown, strconv.Quote(h))
			} else if len(unknown) == 10 {
				unknown = append(unknown, "…")
			}
			continue
		}
		if seen[f] {
			return nil, &BatchError{Reason: "CSV header: column " + strconv.Quote(h) + " appears twice"}
		}
		seen[f] = true
		cols[i] = f
	}
	if len(unknown) > 0 {
		return nil, &BatchError{Reason: "CSV header: unknown column(s) " + strings.Join(unknown, ", ") + "; known: " + strings.Join(Fields, ", ")}
	}
	var missing []string
	for _, f := range []int{fRecordID, fStart, fEnd, fBytesUp, fBytesDown} {
		if !seen[f] {
			missing = append(missing, Fields[f])
		}
	}
	if !seen[fICCID] && !seen[fIMSI] && !seen[fMSISDN] {
		missing = append(missing, "iccid (or imsi or msisdn)")
	}
	if len(missing) > 0 {
		return nil, &BatchError{Reason: "CSV header: missing column(s) " + strings.Join(missing, ", ")}
	}
	return &CSVReader{r: r, cols: cols, maxLine: maxLine}, nil
}

// Line implements Reader.
func (c *CSVReader) Line() int { return c.line }

// Next implements Reader.
func (c *CSVReader) Next(rec *Record) error {
	row, err := c.r.Read()
	if err == io.EOF {
		return io.EOF
	}
	idx := c.index
	*rec = Record{}
	if err != nil {
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			c.line = pe.StartLine
			c.index++
			return &RecordError{Index: idx, Line: pe.StartLine, Field: "", Reason: "malformed CSV: " + pe.Err.Error()}
		}
		var be *BatchError
		if errors.As(err, &be) {
			return be
		}
		return &BatchError{Reason: "reading body: " + err.Error(), Err: err}
	}
	line, _ := c.r.FieldPos(0)
	c.line = line
	c.index++
	if len(row) != len(c.cols) {
		return &RecordError{Index: idx, Line: line, Field: "", Reason: fmt.Sprintf("has %d columns, the header has %d", len(row), len(c.cols))}
	}
	if c.maxLine > 0 {
		n := 0
		for _, v := range row {
			n += len(v) + 1
		}
		if n > c.maxLine {
			return &BatchError{Reason: fmt.Sprintf("line %d is longer than the limit of %d bytes", line, c.maxLine), LineTooLong: true}
		}
	}
	// record_id first, so that every later error can name the record.
	for i, f := range c.cols {
		if f == fRecordID {
			rec.RecordID = row[i]
		}
	}
	for i, f := range c.cols {
		if reason := setField(rec, f, strings.TrimSpace(row[i])); reason != "" {
			return &RecordError{Index: idx, Line: line, RecordID: rec.RecordID, Field: Fields[f], Reason: reason}
		}
	}
	return nil
}

// NDJSONReader reads one JSON object per line. Unknown fields are refused.
type NDJSONReader struct {
	s     *bufio.Scanner
	line  int
	index int
}

// NewNDJSONReader reads NDJSON; maxLine bounds a line's length in bytes.
func NewNDJSONReader(in io.Reader, maxLine int) *NDJSONReader {
	if maxLine <= 0 {
		maxLine = 1 << 20
	}
	s := bufio.NewScanner(in)
	s.Buffer(make([]byte, 0, min(maxLine, 64<<10)), maxLine)
	return &NDJSONReader{s: s}
}

// jsonRecord is the wire shape of one record; numbers stay raw so that a
// fraction, a negative value or a number in quotes is reported against its
// field.
type jsonRecord struct {
	RecordID  *string         `json:"record_id"`
	ICCID     string          `json:"iccid"`
	IMSI      string          `json:"imsi"`
	MSISDN    string          `json:"msisdn"`
	StartTime string          `json:"start_time"`
	EndTime   string          `json:"end_time"`
	BytesUp   json.RawMessage `json:"bytes_up"` // raw: a number given as a string is refused
	BytesDown json.RawMessage `json:"bytes_down"`
	Sequence  json.RawMessage `json:"sequence"`
	SessionID string          `json:"session_id"`
	APN       string          `json:"apn"`
	RAT       string          `json:"rat"`
	IMEI      string          `json:"imei"`
	CellID    string          `json:"cell_id"`
}

// Line implements Reader.
func (n *NDJSONReader) Line() int { return n.line }

// Next implements Reader.
func (n *NDJSONReader) Next(rec *Record) error {
	for {
		if !n.s.Scan() {
			if err := n.s.Err(); err != nil {
				if errors.Is(err, bufio.ErrTooLong) {
					return &BatchError{Reason: fmt.Sprintf("line %d is longer than the limit", n.line+1), LineTooLong: true}
				}
				return &BatchError{Reason: "reading body: " + err.Error(), Err: err}
			}
			return io.EOF
		}
		n.line++
		b := bytes.TrimSpace(n.s.Bytes())
		if len(b) == 0 {
			continue
		}
		idx := n.index
		n.index++
		*rec = Record{}
		return decodeJSONRecord(b, rec, idx, n.line)
	}
}

func decodeJSONRecord(b []byte, rec *Record, idx, line int) error {
	if decodeFast(b, rec) {
		return nil
	}
	*rec = Record{}
	return decodeJSONRecordSlow(b, rec, idx, line)
}

// decodeJSONRecordSlow decodes with encoding/json and names every fault.
func decodeJSONRecordSlow(b []byte, rec *Record, idx, line int) error {
	if !utf8.Valid(b) {
		// encoding/json would make each bad byte U+FFFD, and two ids one
		return &RecordError{Index: idx, Line: line, Field: invalidUTF8Field(b), Reason: "not valid UTF-8"}
	}
	var j jsonRecord
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	d.UseNumber()
	if err := d.Decode(&j); err != nil {
		field, reason := "", "malformed JSON: "+err.Error()
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field, reason = te.Field, "wrong type: expected "+te.Type.String()
		} else if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
			field, reason = strings.Trim(strings.TrimPrefix(s, "json: unknown field "), `"`), "unknown field"
		}
		return &RecordError{Index: idx, Line: line, Field: field, Reason: reason}
	}
	if d.More() {
		return &RecordError{Index: idx, Line: line, Reason: "more than one JSON value on the line"}
	}
	if j.RecordID != nil {
		rec.RecordID = *j.RecordID
	}
	fail := func(f int, reason string) error {
		return &RecordError{Index: idx, Line: line, RecordID: rec.RecordID, Field: Fields[f], Reason: reason}
	}
	rec.ICCID, rec.IMSI, rec.MSISDN = j.ICCID, j.IMSI, j.MSISDN
	rec.SessionID, rec.APN, rec.RAT, rec.IMEI, rec.CellID = j.SessionID, j.APN, j.RAT, j.IMEI, j.CellID
	for _, t := range [...]struct {
		f int
		v string
	}{{fStart, j.StartTime}, {fEnd, j.EndTime}} {
		if r := setField(rec, t.f, t.v); r != "" {
			return fail(t.f, r)
		}
	}
	for _, nv := range [...]struct {
		f int
		v json.RawMessage
	}{{fBytesUp, j.BytesUp}, {fBytesDown, j.BytesDown}, {fSequence, j.Sequence}} {
		switch {
		case len(nv.v) == 0 || string(nv.v) == "null":
			if nv.f != fSequence {
				return fail(nv.f, "required")
			}
			continue
		case nv.v[0] == '"':
			return fail(nv.f, "wrong type: expected an integer, not a string")
		}
		if r := setField(rec, nv.f, string(nv.v)); r != "" {
			return fail(nv.f, r)
		}
	}
	return nil
}

// invalidUTF8Field names the field of a JSON record line whose key or
// value holds bytes that are not UTF-8 (the raw values keep them).
func invalidUTF8Field(b []byte) string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(b, &raw) != nil {
		return ""
	}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	slices.Sort(names) // the first in a stable order when several are bad
	for _, k := range names {
		if !utf8.Valid(raw[k]) {
			return k
		}
	}
	return ""
}
