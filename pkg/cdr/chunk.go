package cdr

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A chunk carries many records of one carrier's batch, all for one
// partition, in one log message. The encoding is compact and versioned:
//
//	version byte (1)
//	uvarint len + carrier, uvarint len + batch id, varint received_at,
//	uvarint record count, then per record: 9 length-prefixed strings
//	(record_id iccid imsi msisdn session_id apn rat imei cell_id),
//	varint start, varint end-start, uvarint up, uvarint down, uvarint sequence.
const chunkVersion = 1

// ChunkHeader describes the records of a chunk.
type ChunkHeader struct {
	Carrier    string
	BatchID    string
	ReceivedAt int64 // Unix seconds the ingest API received the batch
}

// AppendChunk appends the encoding of a chunk to dst.
func AppendChunk(dst []byte, h ChunkHeader, recs []Record) []byte {
	dst = append(dst, chunkVersion)
	dst = appendString(dst, h.Carrier)
	dst = appendString(dst, h.BatchID)
	dst = binary.AppendVarint(dst, h.ReceivedAt)
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		for _, s := range [...]string{r.RecordID, r.ICCID, r.IMSI, r.MSISDN, r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID} {
			dst = appendString(dst, s)
		}
		dst = binary.AppendVarint(dst, r.Start)
		dst = binary.AppendVarint(dst, r.End-r.Start)
		dst = binary.AppendUvarint(dst, r.BytesUp)
		dst = binary.AppendUvarint(dst, r.BytesDown)
		dst = binary.AppendUvarint(dst, uint64(r.Sequence))
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// ErrCorruptChunk is returned for bytes that are not a valid chunk. Only
// the canonical encoding decodes: every chunk has one byte form.
var ErrCorruptChunk = errors.New("corrupt usage chunk")

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) { // short, overflowing or not minimal
		d.err = ErrCorruptChunk
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) { // short, overflowing or not minimal
		d.err = ErrCorruptChunk
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = ErrCorruptChunk
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// DecodeChunk decodes a chunk, appending its records to recs[:0].
func DecodeChunk(b []byte, h *ChunkHeader, recs []Record) ([]Record, error) {
	if len(b) == 0 || b[0] != chunkVersion {
		return recs[:0], fmt.Errorf("%w: unknown version", ErrCorruptChunk)
	}
	d := decoder{b: b[1:]}
	h.Carrier = d.str()
	h.BatchID = d.str()
	h.ReceivedAt = d.varint()
	n := d.uvarint()
	// every record takes at least 14 bytes, so a count beyond that is a lie
	if d.err == nil && n > uint64(len(d.b)/14) {
		return recs[:0], fmt.Errorf("%w: record count %d too large", ErrCorruptChunk, n)
	}
	recs = recs[:0]
	for i := uint64(0); i < n && d.err == nil; i++ {
		var r Record
		r.RecordID, r.ICCID, r.IMSI, r.MSISDN = d.str(), d.str(), d.str(), d.str()
		r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID = d.str(), d.str(), d.str(), d.str(), d.str()
		r.Start = d.varint()
		r.End = r.Start + d.varint()
		r.BytesUp = d.uvarint()
		r.BytesDown = d.uvarint()
		seq := d.uvarint()
		if seq > 1<<32-1 {
			d.err = ErrCorruptChunk
		}
		r.Sequence = uint32(seq)
		recs = append(recs, r)
	}
	if d.err != nil {
		return recs[:0], d.err
	}
	if len(d.b) != 0 {
		return recs[:0], fmt.Errorf("%w: %d trailing bytes", ErrCorruptChunk, len(d.b))
	}
	return recs, nil
}
