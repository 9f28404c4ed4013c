package cdr

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cardmeter/cardmeter/pkg/wire"
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
	dst = wire.AppendString(dst, h.Carrier)
	dst = wire.AppendString(dst, h.BatchID)
	dst = binary.AppendVarint(dst, h.ReceivedAt)
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		for _, s := range [...]string{r.RecordID, r.ICCID, r.IMSI, r.MSISDN, r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID} {
			dst = wire.AppendString(dst, s)
		}
		dst = binary.AppendVarint(dst, r.Start)
		dst = binary.AppendVarint(dst, r.End-r.Start)
		dst = binary.AppendUvarint(dst, r.BytesUp)
		dst = binary.AppendUvarint(dst, r.BytesDown)
		dst = binary.AppendUvarint(dst, uint64(r.Sequence))
	}
	return dst
}

// ErrCorruptChunk is returned for bytes that are not a valid chunk. Only
// the canonical encoding decodes: every chunk has one byte form.
var ErrCorruptChunk = errors.New("corrupt usage chunk")

// DecodeChunk decodes a chunk, appending its records to recs[:0].
func DecodeChunk(b []byte, h *ChunkHeader, recs []Record) ([]Record, error) {
	if len(b) == 0 || b[0] != chunkVersion {
		return recs[:0], fmt.Errorf("%w: unknown version", ErrCorruptChunk)
	}
	d := wire.Reader{B: b[1:]}
	h.Carrier = d.String()
	h.BatchID = d.String()
	h.ReceivedAt = d.Varint()
	n := d.Uvarint()
	// every record takes at least 14 bytes, so a count beyond that is a lie
	if d.Err == nil && n > uint64(len(d.B)/14) {
		return recs[:0], fmt.Errorf("%w: record count %d too large", ErrCorruptChunk, n)
	}
	recs = recs[:0]
	for i := uint64(0); i < n && d.Err == nil; i++ {
		var r Record
		r.RecordID, r.ICCID, r.IMSI, r.MSISDN = d.String(), d.String(), d.String(), d.String()
		r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID = d.String(), d.String(), d.String(), d.String(), d.String()
		r.Start = d.Varint()
		r.End = r.Start + d.Varint()
		r.BytesUp = d.Uvarint()
		r.BytesDown = d.Uvarint()
		seq := d.Uvarint()
		if seq > 1<<32-1 {
			d.Err = wire.ErrCorrupt
		}
		r.Sequence = uint32(seq)
		recs = append(recs, r)
	}
	if d.Err != nil {
		return recs[:0], fmt.Errorf("%w: %v", ErrCorruptChunk, d.Err)
	}
	if len(d.B) != 0 {
		return recs[:0], fmt.Errorf("%w: %d trailing bytes", ErrCorruptChunk, len(d.B))
	}
	return recs, nil
}
