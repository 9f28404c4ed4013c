package projector

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/event"
)

// Folder applies the log messages of one partition to its state, and turns
// what the fold emits into the public events (with their deterministic
// ids) and the usage the sink writes. The projector and the analytics
// rebuild both fold through it, so a rebuild writes exactly the rows the
// live pipeline wrote. Not safe for concurrent use.
type Folder struct {
	Partition int
	State     *card.Partition

	recs     []cdr.Record
	verdicts []card.Verdict
	emitted  []card.Emitted
}

// Output is what one log message produced.
type Output struct {
	Events   []event.Envelope
	Accepted *event.Accepted // usage chunks whose records counted
	Verdicts *ChunkVerdicts  // usage chunks
}

// Fold applies the message at seq on subject. An error means the log holds
// something this build cannot fold: the caller must stop there, since
// skipping it would fold another history than the log's.
func (f *Folder) Fold(subject string, seq uint64, data []byte) (Output, error) {
	var out Output
	var err error
	f.emitted = f.emitted[:0]
	if strings.HasSuffix(subject, ".usage") {
		// the records share data's bytes (no copy per field): the fold
		// keeps no record string, and the output is published and dropped
		var h cdr.ChunkHeader
		if f.recs, err = cdr.DecodeChunkView(data, &h, f.recs); err != nil {
			return out, fmt.Errorf("seq %d on %s: %w", seq, subject, err)
		}
		f.verdicts, f.emitted = f.State.ApplyUsage(&h, f.recs, f.verdicts, f.emitted)
		acc := &event.Accepted{Partition: f.Partition, Seq: seq, Carrier: h.Carrier, ReceivedAt: h.ReceivedAt,
			Rows: make([]event.AcceptedRow, 0, len(f.recs))}
		out.Verdicts = &ChunkVerdicts{}
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
	}
	if len(f.emitted) > 0 {
		out.Events = make([]event.Envelope, len(f.emitted))
		for i := range f.emitted {
			out.Events[i] = event.FromEmitted(&f.emitted[i], fmt.Sprintf("%d-%d-%d", f.Partition, seq, i))
		}
	}
	return out, nil
}
