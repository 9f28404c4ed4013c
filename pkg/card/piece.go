package card

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/cardmeter/cardmeter/pkg/wire"
)

// A checkpoint piece is binary since version 7: the magic, the version,
// the head as JSON (plans, accounts and pools: few, and read by people),
// then the cards, each field in a fixed order as varints and
// length-prefixed strings (pkg/wire). Encoding a card costs no reflection
// and no base64 of its filters: a checkpoint of a partition whose every
// card changed is the fold's pause, so it has to be cheap. Versions 5 and
// 6 were JSON throughout and are still read.
var pieceMagic = []byte("cmcp")

// card flags in a piece
const (
	flagAutoStop = 1 << iota
	flagCancelled
	flagCmdApplied
	flagFilters // the card has Filters (nil otherwise: a delta's card whose slots stayed)
	flagDevice  // version 8: the card's device binding follows its Added
	flagAnomaly // version 8: the card's day ring follows (after the device binding)
)

// device flags, in the byte after a card's devices
const (
	deviceBindFirst = 1 << iota
	deviceStopOnChange
)

// anomaly flags, in the byte after a card's day ring
const (
	anomalyTold = 1 << iota
	anomalyStop
)

// encodePiece writes a piece: the head, then n cards that each emits.
// sizeHint is what the cards will take, to size the buffer once.
func encodePiece(head *snapshot, n, sizeHint int, each func(emit func(*cardSnapshot))) ([]byte, error) {
	h, err := json.Marshal(head)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(pieceMagic)+2*binary.MaxVarintLen64+len(h)+sizeHint)
	b = append(b, pieceMagic...)
	b = binary.AppendUvarint(b, snapshotVersion)
	b = wire.AppendBytes(b, h)
	b = binary.AppendUvarint(b, uint64(n))
	written := 0
	each(func(cs *cardSnapshot) {
		b = appendCard(b, cs)
		written++
	})
	if written != n {
		return nil, fmt.Errorf("encoding a checkpoint piece: %d cards announced, %d written", n, written)
	}
	return b, nil
}

func appendCard(b []byte, cs *cardSnapshot) []byte {
	b = wire.AppendString(b, cs.ICCID)
	b = binary.AppendUvarint(b, uint64(cs.Ord))
	for _, s := range [...]string{cs.Account, cs.Plan, cs.Carrier, cs.IMSI, cs.MSISDN, cs.Pool, cs.LastCmd.ID, cs.LastCmd.Code} {
		b = wire.AppendString(b, s)
	}
	var flags byte
	if cs.AutoStop {
		flags |= flagAutoStop
	}
	if cs.Cancelled {
		flags |= flagCancelled
	}
	if cs.LastCmd.Applied {
		flags |= flagCmdApplied
	}
	if cs.Filters != nil {
		flags |= flagFilters
	}
	hasDevice := cs.IMEIBound != 0 || cs.IMEILast != 0 || cs.IMEISince != 0 || cs.BindFirst || cs.StopOnIMEI
	if hasDevice {
		flags |= flagDevice
	}
	hasAnomaly := cs.Day != 0 || cs.StopOnAnomaly
	if hasAnomaly {
		flags |= flagAnomaly
	}
	b = append(b, flags, byte(cs.Reasons))
	for _, v := range [...]int64{cs.ValidFrom, cs.ValidUntil, cs.ExpiredAt, cs.Cycle[0], cs.Cycle[1], cs.KeepFrom} {
		b = binary.AppendVarint(b, v)
	}
	for _, v := range [...]uint64{cs.Usage, cs.Overshoot, cs.Charged, uint64(cs.Warned), uint64(len(cs.Closed))} {
		b = binary.AppendUvarint(b, v)
	}
	for _, cl := range cs.Closed {
		b = binary.AppendVarint(b, int64(cl[0]))
		b = binary.AppendUvarint(b, cl[1])
		b = binary.AppendUvarint(b, cl[2])
	}
	if cs.Filters != nil {
		b = binary.AppendUvarint(b, uint64(len(cs.Filters)))
		for _, f := range cs.Filters {
			b = wire.AppendBytes(b, f)
		}
	}
	b = wire.AppendBytes(b, cs.Recent)
	b = wire.AppendBytes(b, cs.Added)
	if hasDevice {
		var opts byte
		if cs.BindFirst {
			opts |= deviceBindFirst
		}
		if cs.StopOnIMEI {
			opts |= deviceStopOnChange
		}
		b = binary.AppendUvarint(b, cs.IMEIBound)
		b = binary.AppendUvarint(b, cs.IMEILast)
		b = binary.AppendVarint(b, cs.IMEISince)
		b = append(b, opts)
	}
	if hasAnomaly {
		var opts byte
		if cs.DayTold {
			opts |= anomalyTold
		}
		if cs.StopOnAnomaly {
			opts |= anomalyStop
		}
		b = binary.AppendVarint(b, int64(cs.Day))
		b = binary.AppendUvarint(b, cs.DayBytes)
		b = binary.AppendUvarint(b, uint64(len(cs.DaysPast)))
		for _, k := range cs.DaysPast {
			b = binary.AppendUvarint(b, uint64(k))
		}
		b = append(b, cs.DaysKnown, opts)
	}
	return b
}

// decodePiece reads a piece of any version this build reads. A binary
// piece's cards share its memory (their Filters, Recent and Added): the
// caller copies what it keeps.
func decodePiece(piece []byte) (*snapshot, error) {
	var s snapshot
	if !bytes.HasPrefix(piece, pieceMagic) {
		if err := json.Unmarshal(piece, &s); err != nil {
			return nil, fmt.Errorf("decoding checkpoint piece: %w", err)
		}
		if s.Version < oldestSnapshotVersion || s.Version > lastJSONVersion {
			return nil, fmt.Errorf("checkpoint piece: JSON of version %d, this build reads JSON of %d to %d", s.Version, oldestSnapshotVersion, lastJSONVersion)
		}
		return &s, nil
	}
	r := wire.Reader{B: piece[len(pieceMagic):]}
	v := r.Uvarint()
	if r.Err == nil && (v < firstBinaryVersion || v > snapshotVersion) {
		return nil, fmt.Errorf("checkpoint piece version %d, this build reads %d to %d", v, oldestSnapshotVersion, snapshotVersion)
	}
	h := r.Bytes()
	if r.Err != nil {
		return nil, fmt.Errorf("decoding checkpoint piece: %w", r.Err)
	}
	if err := json.Unmarshal(h, &s); err != nil {
		return nil, fmt.Errorf("decoding checkpoint piece's head: %w", err)
	}
	if uint64(s.Version) != v || s.Cards != nil {
		return nil, fmt.Errorf("checkpoint piece's head says version %d with %d cards", s.Version, len(s.Cards))
	}
	n := r.Uvarint()
	if n > uint64(len(r.B)) { // a card takes more than a byte
		return nil, fmt.Errorf("checkpoint piece: %d cards in %d bytes", n, len(r.B))
	}
	s.Cards = make([]cardSnapshot, n)
	for i := range s.Cards {
		readCard(&r, &s.Cards[i])
		if r.Err != nil {
			return nil, fmt.Errorf("decoding checkpoint piece: card %d of %d: %w", i, n, r.Err)
		}
	}
	if len(r.B) != 0 {
		return nil, fmt.Errorf("checkpoint piece: %d bytes after its last card", len(r.B))
	}
	return &s, nil
}

func readCard(r *wire.Reader, cs *cardSnapshot) {
	cs.ICCID = r.String()
	cs.Ord = int(r.Uvarint())
	for _, s := range [...]*string{&cs.Account, &cs.Plan, &cs.Carrier, &cs.IMSI, &cs.MSISDN, &cs.Pool, &cs.LastCmd.ID, &cs.LastCmd.Code} {
		*s = r.String()
	}
	for _, s := range [...]string{cs.ICCID, cs.Account, cs.Plan, cs.Carrier, cs.IMSI, cs.MSISDN, cs.Pool, cs.LastCmd.ID, cs.LastCmd.Code} {
		if r.Err == nil && !utf8.ValidString(s) { // as every id is: it came in JSON, and the head is JSON
			r.Err = fmt.Errorf("a string of the card is not UTF-8: %q", s)
		}
	}
	flags := r.Byte()
	cs.Reasons = Reasons(r.Byte())
	cs.AutoStop, cs.Cancelled, cs.LastCmd.Applied = flags&flagAutoStop != 0, flags&flagCancelled != 0, flags&flagCmdApplied != 0
	for _, v := range [...]*int64{&cs.ValidFrom, &cs.ValidUntil, &cs.ExpiredAt, &cs.Cycle[0], &cs.Cycle[1], &cs.KeepFrom} {
		*v = r.Varint()
	}
	cs.Usage, cs.Overshoot, cs.Charged = r.Uvarint(), r.Uvarint(), r.Uvarint()
	cs.Warned = warnings(r.Uvarint())
	if n := r.Uvarint(); n > 0 && r.Err == nil {
		if n > RetainedCycles+1 {
			r.Err = fmt.Errorf("%d closed cycles", n)
			return
		}
		cs.Closed = make([][3]uint64, n)
		for i := range cs.Closed {
			cs.Closed[i] = [3]uint64{uint64(r.Varint()), r.Uvarint(), r.Uvarint()}
		}
	}
	if flags&flagFilters != 0 {
		n := r.Uvarint()
		if n > uint64(len(r.B)) {
			r.Err = wire.ErrCorrupt
			return
		}
		cs.Filters = make([][]byte, n)
		for i := range cs.Filters {
			cs.Filters[i] = r.Bytes()
		}
	}
	if b := r.Bytes(); len(b) > 0 {
		cs.Recent = b
	}
	if b := r.Bytes(); len(b) > 0 {
		cs.Added = b
	}
	if flags&flagDevice != 0 {
		cs.IMEIBound, cs.IMEILast, cs.IMEISince = r.Uvarint(), r.Uvarint(), r.Varint()
		opts := r.Byte()
		cs.BindFirst, cs.StopOnIMEI = opts&deviceBindFirst != 0, opts&deviceStopOnChange != 0
	}
	if flags&flagAnomaly != 0 {
		cs.Day = int32(r.Varint())
		cs.DayBytes = r.Uvarint()
		n := r.Uvarint()
		if n > anomalyDays {
			if r.Err == nil {
				r.Err = fmt.Errorf("%d past days", n)
			}
			return
		}
		if n > 0 {
			cs.DaysPast = make([]dayBytes, n)
			for i := range cs.DaysPast {
				cs.DaysPast[i] = dayBytes(r.Uvarint())
			}
		}
		cs.DaysKnown = r.Byte()
		opts := r.Byte()
		cs.DayTold, cs.StopOnAnomaly = opts&anomalyTold != 0, opts&anomalyStop != 0
	}
}
