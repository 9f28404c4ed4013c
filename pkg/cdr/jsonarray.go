package cdr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// JSONArrayReader reads a JSON array of record objects. Unknown fields are
// refused per record; maxElem bounds one element's size in bytes, as the
// line limit bounds a line of CSV or NDJSON.
type JSONArrayReader struct {
	data    []byte
	dec     *json.Decoder
	pos     int // offset up to which line counts
	line    int // line at pos (1-based)
	recLine int
	index   int
	maxElem int
	done    bool
}

// NewJSONArrayReader reads the whole input (the caller bounds it) and
// checks that it opens an array.
func NewJSONArrayReader(in io.Reader, maxElem int) (*JSONArrayReader, error) {
	data, err := io.ReadAll(in)
	if err != nil {
		return nil, &BatchError{Reason: "reading body: " + err.Error(), Err: err}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err == io.EOF {
		return nil, &BatchError{Reason: "empty body: expected a JSON array of records"}
	}
	if d, ok := tok.(json.Delim); err != nil || !ok || d != '[' {
		return nil, &BatchError{Reason: "the body is not a JSON array of records"}
	}
	if maxElem <= 0 {
		maxElem = 1 << 20
	}
	return &JSONArrayReader{data: data, dec: dec, line: 1, maxElem: maxElem}, nil
}

// Line implements Reader.
func (j *JSONArrayReader) Line() int { return j.recLine }

// advance counts lines up to offset off.
func (j *JSONArrayReader) advance(off int) {
	j.line += bytes.Count(j.data[j.pos:off], []byte{'\n'})
	j.pos = off
}

// Next implements Reader.
func (j *JSONArrayReader) Next(rec *Record) error {
	if j.done || !j.dec.More() {
		if !j.done {
			j.done = true
			if _, err := j.dec.Token(); err != nil { // the closing ]
				return &BatchError{Reason: "the JSON array is not closed: " + err.Error()}
			}
			if _, err := j.dec.Token(); err != io.EOF {
				return &BatchError{Reason: "data after the JSON array"}
			}
		}
		return io.EOF
	}
	// the element starts at the first non-space, non-comma byte
	start := int(j.dec.InputOffset())
	for start < len(j.data) && (j.data[start] == ' ' || j.data[start] == '\t' || j.data[start] == '\r' || j.data[start] == '\n' || j.data[start] == ',') {
		start++
	}
	j.advance(start)
	j.recLine = j.line
	idx := j.index
	j.index++
	*rec = Record{}
	var raw json.RawMessage
	if err := j.dec.Decode(&raw); err != nil {
		j.done = true
		return &BatchError{Reason: fmt.Sprintf("malformed JSON at line %d: %v", j.line, err)}
	}
	if len(raw) > j.maxElem {
		return &BatchError{Reason: fmt.Sprintf("the record at line %d is longer than the limit of %d bytes", j.line, j.maxElem), LineTooLong: true}
	}
	return decodeJSONRecord(raw, rec, idx, j.recLine)
}
