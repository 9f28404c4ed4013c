// Package fold is the shell around the pure fold (pkg/card) that live
// folding, the analytics rebuild and simulations share: it decodes a log
// message, reads the record ids the card filters cannot rule out from the
// exact index, applies the message to the state, and turns what the fold
// emits into the public events (with their deterministic ids), the usage
// the sink writes and the verdicts batch answers report.
package fold

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/event"
	"github.com/cardmeter/cardmeter/pkg/query"
)

// Index is the exact record-id index: pkg/index on disk, or a map. Get
// answers the latest entry of a card's record id among those of cycles
// that start in [from, to].
type Index interface {
	Get(card, id uint64, from, to int64) (card.Lookup, error)
}

// ErrIndex marks a failure to read the index: the message was not folded,
// and folding it again once the index reads may succeed.
var ErrIndex = errors.New("reading the record-id index")

// Folder applies the log messages of one partition to its state. Without
// an Index, the state keeps every record id it counts (card.Partition
// forgets them only at TakeIDs). Not safe for concurrent use.
type Folder struct {
	Partition int
	State     *card.Partition
	Index     Index

	recs     []cdr.Record
	probe    card.Probe
	group    []card.Verdict // a group's verdicts, before they join verdicts
	verdicts []card.Verdict
	emitted  []card.Emitted
	lookups  uint64
}

// Output is what one log message produced.
type Output struct {
	Events   []event.Envelope
	Accepted *event.Accepted      // usage chunks whose records counted
	Verdicts *query.ChunkVerdicts // usage chunks
	Decision *query.Decision      // other inputs: applied, or refused and why
}

// Lookups is how many index lookups the filters let through so far.
func (f *Folder) Lookups() uint64 { return f.lookups }

// Fold applies the message at seq on subject. An error wrapping ErrIndex
// means the index could not be read and nothing was applied; any other
// means the log holds something this build cannot fold: the caller must
// stop there, since skipping it would fold another history than the log's.
func (f *Folder) Fold(subject string, seq uint64, data []byte) (Output, error) {
	var out Output
	var err error
	f.emitted = f.emitted[:0]
	if broker.IsUsageSubject(subject) {
		// the records share data's bytes (no copy per field): the fold
		// keeps no record string, and the output is published and dropped
		var h cdr.ChunkHeader
		if f.recs, err = cdr.DecodeChunkView(data, &h, f.recs); err != nil {
			return out, fmt.Errorf("seq %d on %s: %w", seq, subject, err)
		}
		if f.Index == nil {
			f.verdicts, f.emitted = f.State.ApplyUsage(&h, f.recs, nil, f.verdicts, f.emitted)
		} else {
			// a group at a time, probed, looked up and folded: what the
			// filters brought into the cache is still there for the fold
			f.verdicts = f.verdicts[:0]
			for lo := 0; lo < len(f.recs); lo += foldGroup {
				recs := f.recs[lo:min(lo+foldGroup, len(f.recs))]
				if err := f.lookup(&h, recs); err != nil {
					return out, fmt.Errorf("seq %d on %s: %w: %w", seq, subject, ErrIndex, err)
				}
				var v []card.Verdict
				v, f.emitted = f.State.ApplyUsage(&h, recs, &f.probe, f.group, f.emitted)
				f.verdicts, f.group = append(f.verdicts, v...), v
			}
		}
		acc := &event.Accepted{Partition: f.Partition, Seq: seq, Carrier: h.Carrier, ReceivedAt: h.ReceivedAt,
			Rows: make([]event.AcceptedRow, 0, len(f.recs))}
		out.Verdicts = &query.ChunkVerdicts{}
		for i := range f.recs {
			acc.AppendRow(i, &f.recs[i], &f.verdicts[i])
			out.Verdicts.Add(f.verdicts[i].Status)
		}
		if len(acc.Rows) > 0 {
			out.Accepted = acc
		}
	} else {
		var in card.Input
		if err := json.Unmarshal(data, &in); err != nil {
			return out, fmt.Errorf("seq %d on %s: %w", seq, subject, err)
		}
		if f.emitted, err = f.State.Apply(&in, f.emitted); err != nil {
			return out, fmt.Errorf("seq %d on %s: %w", seq, subject, err)
		}
		out.Decision = &query.Decision{}
		for i := range f.emitted {
			if e := &f.emitted[i]; e.Type == card.EmitInputRefused && e.Cause == "event:"+in.ID {
				out.Decision = &query.Decision{Refused: true, Code: e.Code, Detail: e.Detail}
				break
			}
		}
	}
	if len(f.emitted) > 0 {
		out.Events = make([]event.Envelope, len(f.emitted))
		for i := range f.emitted {
			out.Events[i] = event.FromEmitted(&f.emitted[i], fmt.Sprintf("%d-%d-%d", f.Partition, seq, i))
		}
	}
	return out, nil
}

// foldGroup is how many records of a chunk are probed and folded at a time.
const foldGroup = 256

// lookup probes recs against the filters and reads from the index those
// that the filters cannot rule out.
func (f *Folder) lookup(h *cdr.ChunkHeader, recs []cdr.Record) error {
	f.State.Probe(h, recs, &f.probe)
	for _, n := range f.probe.Needs {
		lk, err := f.Index.Get(n.Card, n.ID, n.From, n.To)
		if err != nil {
			return err
		}
		f.probe.Found[n.Rec] = lk
	}
	f.lookups += uint64(len(f.probe.Needs))
	return nil
}
