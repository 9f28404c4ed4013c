package cdr

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// JSONArrayReader reads a JSON array of record objects as a stream: it
// holds one element at a time, and maxElem bounds an element's size in
// bytes as the line limit bounds a line of CSV or NDJSON, so a body of any
// size is read in bounded memory. Unknown fields are refused per record.
// An element that is not well-formed JSON ends the batch (the array's
// structure after it cannot be trusted).
type JSONArrayReader struct {
	r       *bufio.Reader
	elem    []byte
	line    int // line of the next byte (1-based)
	recLine int
	index   int
	maxElem int
	done    bool
}

// NewJSONArrayReader checks that the input opens an array.
func NewJSONArrayReader(in io.Reader, maxElem int) (*JSONArrayReader, error) {
	if maxElem <= 0 {
		maxElem = 1 << 20
	}
	j := &JSONArrayReader{r: bufio.NewReaderSize(in, 64<<10), line: 1, maxElem: maxElem}
	c, err := j.skipSpace()
	switch {
	case err == io.EOF:
		return nil, &BatchError{Reason: "empty body: expected a JSON array of records"}
	case err != nil:
		return nil, readError(err)
	case c != '[':
		return nil, &BatchError{Reason: "the body is not a JSON array of records"}
	}
	return j, nil
}

func readError(err error) error {
	return &BatchError{Reason: "reading body: " + err.Error(), Err: err}
}

// Line implements Reader.
func (j *JSONArrayReader) Line() int { return j.recLine }

// skipSpace returns the next byte that is not JSON white space.
func (j *JSONArrayReader) skipSpace() (byte, error) {
	for {
		c, err := j.r.ReadByte()
		if err != nil {
			return 0, err
		}
		switch c {
		case '\n':
			j.line++
		case ' ', '\t', '\r':
		default:
			return c, nil
		}
	}
}

// Next implements Reader.
func (j *JSONArrayReader) Next(rec *Record) error {
	if j.done {
		return io.EOF
	}
	c, err := j.skipSpace()
	if err == nil && j.index > 0 {
		// after an element: a comma and the next one, or the end
		switch c {
		case ',':
			c, err = j.skipSpace()
			if err == nil && c == ']' {
				j.done = true
				return &BatchError{Reason: fmt.Sprintf("malformed JSON at line %d: a comma before ]", j.line)}
			}
		case ']':
		default:
			j.done = true
			return &BatchError{Reason: fmt.Sprintf("malformed JSON at line %d: expected , or ] after a record", j.line)}
		}
	}
	if err != nil {
		j.done = true
		if err == io.EOF {
			return &BatchError{Reason: "the JSON array is not closed: unexpected end of body"}
		}
		return readError(err)
	}
	if c == ']' {
		j.done = true
		if _, err := j.skipSpace(); err != io.EOF {
			if err != nil {
				return readError(err)
			}
			return &BatchError{Reason: "data after the JSON array"}
		}
		return io.EOF
	}
	j.recLine = j.line
	idx := j.index
	j.index++
	if err := j.scan(c); err != nil {
		j.done = true
		return err
	}
	if !json.Valid(j.elem) {
		j.done = true
		var se *json.SyntaxError
		err := json.Unmarshal(j.elem, new(json.RawMessage))
		if errors.As(err, &se) {
			return &BatchError{Reason: fmt.Sprintf("malformed JSON at line %d: %v", j.recLine, se)}
		}
		return &BatchError{Reason: fmt.Sprintf("malformed JSON at line %d", j.recLine)}
	}
	*rec = Record{}
	return decodeJSONRecord(j.elem, rec, idx, j.recLine)
}

// scan reads one element, whose first byte is c, into j.elem: an object
// or array up to its matching close, a string up to its closing quote, or
// a number or literal up to the next delimiter (left unread).
func (j *JSONArrayReader) scan(c byte) error {
	j.elem = append(j.elem[:0], c)
	depth, inString, escaped := 0, false, false
	switch c {
	case '{', '[':
		depth = 1
	case '"':
		inString = true
	}
	for depth > 0 || inString || (c != '"' && len(j.elem) >= 1 && !isDelim(j.peek())) {
		b, err := j.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				if depth == 0 && !inString {
					return nil // a scalar at the end: the missing ] is found next
				}
				return &BatchError{Reason: "the JSON array is not closed: unexpected end of body"}
			}
			return readError(err)
		}
		if len(j.elem) == j.maxElem {
			return &BatchError{Reason: fmt.Sprintf("the record at line %d is longer than the limit of %d bytes", j.recLine, j.maxElem), LineTooLong: true}
		}
		j.elem = append(j.elem, b)
		switch {
		case b == '\n':
			j.line++
		case escaped:
			escaped = false
		case inString && b == '\\':
			escaped = true
		case b == '"':
			inString = !inString
			if depth == 0 {
				return nil // a string element ends at its closing quote
			}
		case inString:
		case b == '{' || b == '[':
			depth++
		case b == '}' || b == ']':
			depth--
			if depth == 0 {
				return nil
			}
		}
	}
	return nil
}

// peek returns the next byte without reading it, or ']' at the end (a
// delimiter, so that a scalar's scan stops).
func (j *JSONArrayReader) peek() byte {
	b, err := j.r.Peek(1)
	if err != nil {
		return ']'
	}
	return b[0]
}

func isDelim(b byte) bool {
	switch b {
	case ',', ']', ' ', '\t', '\r', '\n':
		return true
	}
	return false
}
