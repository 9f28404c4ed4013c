// Package wire holds the primitives of cardmeter's binary log formats
// (usage chunks, accepted usage): length-prefixed strings and canonical
// varints, read with a sticky error.
package wire

import (
	"encoding/binary"
	"errors"
	"unsafe"
)

// ErrCorrupt is the error of a Reader that met bytes it could not read.
var ErrCorrupt = errors.New("corrupt encoding")

// AppendString appends a uvarint length and the bytes of s.
func AppendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Reader reads what the Append functions and encoding/binary wrote. The
// first fault sticks in Err and later reads return zero values. Only the
// canonical (shortest) varint encoding reads, so every message has one byte
// form.
type Reader struct {
	B   []byte
	Err error
	// Alias makes String return strings that share B's memory instead of
	// copies: no allocation per string, but B must never change after, and
	// every string read keeps all of B alive. For a message that is read,
	// used and dropped as a whole.
	Alias bool
}

// Uvarint reads an unsigned varint.
func (r *Reader) Uvarint() uint64 {
	if r.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.B)
	if n <= 0 || (n > 1 && r.B[n-1] == 0) { // short, overflowing or not minimal
		r.Err = ErrCorrupt
		return 0
	}
	r.B = r.B[n:]
	return v
}

// Varint reads a signed varint.
func (r *Reader) Varint() int64 {
	if r.Err != nil {
		return 0
	}
	v, n := binary.Varint(r.B)
	if n <= 0 || (n > 1 && r.B[n-1] == 0) {
		r.Err = ErrCorrupt
		return 0
	}
	r.B = r.B[n:]
	return v
}

// String reads a length-prefixed string.
func (r *Reader) String() string {
	n := r.Uvarint()
	if r.Err != nil {
		return ""
	}
	if n > uint64(len(r.B)) {
		r.Err = ErrCorrupt
		return ""
	}
	var s string
	switch {
	case n == 0:
	case r.Alias:
		s = unsafe.String(&r.B[0], int(n))
	default:
		s = string(r.B[:n])
	}
	r.B = r.B[n:]
	return s
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.Err != nil || len(r.B) == 0 {
		r.Err = ErrCorrupt
		return 0
	}
	c := r.B[0]
	r.B = r.B[1:]
	return c
}

// Bytes reads a length-prefixed byte string. It shares B's memory: copy
// what is kept after B changes.
func (r *Reader) Bytes() []byte {
	n := r.Uvarint()
	if r.Err != nil {
		return nil
	}
	if n > uint64(len(r.B)) {
		r.Err = ErrCorrupt
		return nil
	}
	b := r.B[:n:n]
	r.B = r.B[n:]
	return b
}

// AppendBytes appends a uvarint length and b.
func AppendBytes(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}
