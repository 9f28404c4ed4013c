package sink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/fold"
	"github.com/cardmeter/cardmeter/pkg/index"
)

// RebuildStats says what a rebuild wrote.
type RebuildStats struct {
	UpTo      uint64 // the METER position the rebuild replayed to
	Messages  int
	UsageRows int
	EventRows int
}

// Progress is told how far a rebuild is: log messages done of total.
type Progress func(done, total uint64)

// Rebuild writes the analytics tables of a database anew from the log: it
// replays every partition of METER, up to the position it finds at start,
// through the same pure fold as the projector, and inserts the rows the
// live sink would have (same positions, same ids). Live ingest goes on
// meanwhile. Point a sink at the rebuilt database afterwards: it skips
// what the rebuild wrote and goes on from there (see Sink).
//
// The database should hold no rows; a rebuild into one that does leaves
// out rows at positions it already holds, as the sink does.
func Rebuild(ctx context.Context, js jetstream.JetStream, ch ClickHouseConfig, partitions, batchRows int, progress Progress, log *zap.Logger) (RebuildStats, error) {
	var st RebuildStats
	if batchRows <= 0 {
		batchRows = 50000
	}
	conn, err := Open(ctx, ch)
	if err != nil {
		return st, err
	}
	defer conn.Close()
	if err := Migrate(ctx, conn, ch); err != nil {
		return st, err
	}
	stream, err := js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return st, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return st, err
	}
	st.UpTo = info.State.LastSeq
	total := info.State.Msgs
	s := &Sink{conn: conn, log: log, cfg: Config{BatchRows: batchRows}}
	var done uint64
	for p := 0; p < partitions; p++ {
		n, usage, events, err := s.rebuildPartition(ctx, js, p, st.UpTo, batchRows, func() {
			done++
			if progress != nil && done%1000 == 0 {
				progress(done, total)
			}
		})
		st.Messages += n
		st.UsageRows += usage
		st.EventRows += events
		if err != nil {
			return st, fmt.Errorf("partition %d: %w", p, err)
		}
	}
	if progress != nil {
		progress(done, total)
	}
	return st, nil
}

func (s *Sink) rebuildPartition(ctx context.Context, js jetstream.JetStream, p int, upTo uint64, batchRows int, tick func()) (msgs, usageRows, eventRows int, err error) {
	if upTo == 0 {
		return 0, 0, 0, nil
	}
	cons, err := js.OrderedConsumer(ctx, broker.StreamMeter, jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.PartitionFilter(p)}})
	if err != nil {
		return 0, 0, 0, err
	}
	// the record ids go to an index on disk as the projector's do, so the
	// rebuild's memory grows with the cards, not with the log
	dir, err := os.MkdirTemp("", fmt.Sprintf("cardmeter-rebuild-p%d-", p))
	if err != nil {
		return 0, 0, 0, err
	}
	defer os.RemoveAll(dir) //nolint:errcheck // a temporary folder
	idx, err := index.Open(dir, nil, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	defer idx.Close()
	folder := &fold.Folder{Partition: p, State: card.NewPartition(), Index: idx}
	uw := &usageWriter{s: s}
	ew := &eventsWriter{s: s}
	var usage, events []blockMsg
	rows := 0
	flush := func() error {
		if len(usage) > 0 {
			n, _, err := uw.insertBlock(ctx, usage, msgs == 0)
			if err != nil {
				return err
			}
			usageRows += n
		}
		if len(events) > 0 {
			n, _, err := ew.insertBlock(ctx, events, msgs == 0)
			if err != nil {
				return err
			}
			eventRows += n
		}
		usage, events, rows = usage[:0], events[:0], 0
		return idx.Add(uint64(msgs), folder.State.TakeIDs(nil), folder.State.IndexFloor())
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return msgs, usageRows, eventRows, err
		}
		got, last := 0, uint64(0)
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				return msgs, usageRows, eventRows, err
			}
			last = meta.Sequence.Stream
			if last > upTo {
				break
			}
			got++
			out, err := folder.Fold(m.Subject(), last, m.Data())
			if err != nil {
				return msgs, usageRows, eventRows, err
			}
			if out.Accepted != nil {
				usage = append(usage, blockMsg{accepted: out.Accepted})
				rows += len(out.Accepted.Rows)
			}
			for i := range out.Events {
				events = append(events, blockMsg{env: &out.Events[i]})
				rows++
			}
			msgs++
			tick()
			if meta.NumPending == 0 {
				last = upTo // the partition is read to its end
			}
			if rows >= batchRows {
				if err := flush(); err != nil {
					return msgs, usageRows, eventRows, err
				}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return msgs, usageRows, eventRows, err
		}
		if last >= upTo || got == 0 {
			break
		}
	}
	return msgs, usageRows, eventRows, flush()
}
