package cdr

import (
	"crypto/sha256"
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
	dst = appendChunkHeader(dst, h, len(recs))
	for i := range recs {
		dst = appendRecord(dst, &recs[i])
	}
	return dst
}

func appendChunkHeader(dst []byte, h ChunkHeader, n int) []byte {
	dst = append(dst, chunkVersion)
	dst = wire.AppendString(dst, h.Carrier)
	dst = wire.AppendString(dst, h.BatchID)
	dst = binary.AppendVarint(dst, h.ReceivedAt)
	return binary.AppendUvarint(dst, uint64(n))
}

func appendRecord(dst []byte, r *Record) []byte {
	for _, s := range [...]string{r.RecordID, r.ICCID, r.IMSI, r.MSISDN, r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID} {
		dst = wire.AppendString(dst, s)
	}
	dst = binary.AppendVarint(dst, r.Start)
	dst = binary.AppendVarint(dst, r.End-r.Start)
	dst = binary.AppendUvarint(dst, r.BytesUp)
	dst = binary.AppendUvarint(dst, r.BytesDown)
	return binary.AppendUvarint(dst, uint64(r.Sequence))
}

// ChunkBuilder encodes records one at a time, as they are read, so that a
// batch is never held as a slice of records: Bytes gives the same chunk
// AppendChunk would. The zero value is ready; Reset empties it for reuse.
type ChunkBuilder struct {
	body []byte
	n    int
}

// Add encodes a record.
func (c *ChunkBuilder) Add(r *Record) {
	c.body = appendRecord(c.body, r)
	c.n++
}

// Grow makes room for n more bytes of records, so that a builder filled
// from a batch of known size does not copy itself as it grows.
func (c *ChunkBuilder) Grow(n int) {
	if cap(c.body)-len(c.body) < n {
		c.body = append(make([]byte, 0, len(c.body)+n), c.body...)
	}
}

// Len is how many records the builder holds.
func (c *ChunkBuilder) Len() int { return c.n }

// Sum is a digest of the records added (not the header), for a message id
// that names the chunk by what it holds.
func (c *ChunkBuilder) Sum() [32]byte { return sha256.Sum256(c.body) }

// Cap is the memory the builder holds, in bytes.
func (c *ChunkBuilder) Cap() int { return cap(c.body) }

// Bytes returns a new slice holding the chunk of the records added.
func (c *ChunkBuilder) Bytes(h ChunkHeader) []byte {
	dst := make([]byte, 0, 16+len(h.Carrier)+len(h.BatchID)+len(c.body))
	return append(appendChunkHeader(dst, h, c.n), c.body...)
}

// Reset empties the builder, keeping its memory.
func (c *ChunkBuilder) Reset() {
	c.body, c.n = c.body[:0], 0
}

// ErrCorruptChunk is returned for bytes that are not a valid chunk. Only
// the canonical encoding decodes: every chunk has one byte form.
var ErrCorruptChunk = errors.New("corrupt usage chunk")

// DecodeChunk decodes a chunk, appending its records to recs[:0].
func DecodeChunk(b []byte, h *ChunkHeader, recs []Record) ([]Record, error) {
	return decodeChunk(b, h, recs, false)
}

// DecodeChunkView is DecodeChunk without copies of the strings: the header's
// and the records' strings share b's memory, so b must not change while
// they are in use, and any string kept keeps all of b alive. For a reader
// that folds a message and drops it.
func DecodeChunkView(b []byte, h *ChunkHeader, recs []Record) ([]Record, error) {
	return decodeChunk(b, h, recs, true)
}

func decodeChunk(b []byte, h *ChunkHeader, recs []Record, alias bool) ([]Record, error) {
	if len(b) == 0 || b[0] != chunkVersion {
		return recs[:0], fmt.Errorf("%w: unknown version", ErrCorruptChunk)
	}
	d := wire.Reader{B: b[1:], Alias: alias}
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
