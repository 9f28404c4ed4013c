package wire

import (
	"encoding/binary"
	"testing"
)

func TestRoundTripAndStrictness(t *testing.T) {
	b := AppendString(nil, "cmcc")
	b = binary.AppendUvarint(b, 1<<40)
	b = binary.AppendVarint(b, -5)
	b = append(b, 7)
	r := Reader{B: b}
	if s, u, v, c := r.String(), r.Uvarint(), r.Varint(), r.Byte(); r.Err != nil || s != "cmcc" || u != 1<<40 || v != -5 || c != 7 || len(r.B) != 0 {
		t.Fatalf("%q %d %d %d %v", s, u, v, c, r.Err)
	}
	// a non-minimal varint (0 written as 0x80 0x00) does not read
	r = Reader{B: []byte{0x80, 0x00}}
	if r.Uvarint(); r.Err == nil {
		t.Fatal("a non-canonical varint read")
	}
	// the first fault sticks
	r = Reader{B: []byte{5, 'a'}} // a 5-byte string with 1 byte
	if r.String() != "" || r.Err == nil || r.Byte() != 0 {
		t.Fatal("a short string read, or the fault did not stick")
	}
}
