package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/event"
)

// Config configures the sink.
type Config struct {
	BatchRows     int           // rows in one insert at most; default 20000
	FlushInterval time.Duration // a block waits at most this long; default 1 s
	Consumer      string        // durable consumer name prefix; default "sink"
}

// Sink consumes ACCEPTED and EVENTS and inserts them into ClickHouse.
type Sink struct {
	cfg  Config
	js   jetstream.JetStream
	conn driver.Conn
	log  *zap.Logger

	mu      sync.Mutex
	lastErr error
}

// New returns a sink; it does nothing until Run.
func New(js jetstream.JetStream, conn driver.Conn, cfg Config, log *zap.Logger) *Sink {
	if cfg.BatchRows == 0 {
		cfg.BatchRows = 20000
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "sink"
	}
	return &Sink{cfg: cfg, js: js, conn: conn, log: log}
}

// Healthy returns the last insert error, or nil once an insert succeeded.
func (s *Sink) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

func (s *Sink) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// Run consumes until ctx ends.
func (s *Sink) Run(ctx context.Context) error {
	loops := []struct {
		stream, name string
		filter       string
		insert       func(context.Context, []jetstream.Msg) error
	}{
		{broker.StreamAccepted, s.cfg.Consumer + "-usage", "accepted.>", s.insertUsage},
		{broker.StreamEvents, s.cfg.Consumer + "-events", "cardmeter.events.>", s.insertEvents},
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(loops))
	for _, l := range loops {
		cons, err := s.js.CreateOrUpdateConsumer(ctx, l.stream, jetstream.ConsumerConfig{
			Durable: l.name, FilterSubject: l.filter, AckPolicy: jetstream.AckAllPolicy,
			AckWait: 30 * time.Second, MaxAckPending: -1, MaxRequestBatch: 0,
		})
		if err != nil {
			return fmt.Errorf("sink: consumer %s: %w", l.name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.loop(ctx, cons, l.insert, s.log.With(zap.String("consumer", l.name))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (s *Sink) loop(ctx context.Context, cons jetstream.Consumer, insert func(context.Context, []jetstream.Msg) error, log *zap.Logger) error {
	var msgs []jetstream.Msg
	for ctx.Err() == nil {
		msgs = msgs[:0]
		batch, err := cons.Fetch(s.cfg.BatchRows/10+1, jetstream.FetchMaxWait(s.cfg.FlushInterval))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("fetch", zap.Error(err))
			time.Sleep(200 * time.Millisecond)
			continue
		}
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if len(msgs) == 0 {
			continue
		}
		// Insert, then ack. A crash between the two re-delivers the block;
		// the tables' keys collapse the repeated rows (ReplacingMergeTree).
		// The insert runs on a context of its own, so a graceful stop
		// finishes the block in hand rather than abandon it.
		bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(0), backoff.WithMaxInterval(10*time.Second)), ctx)
		err = backoff.RetryNotify(func() error {
			ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			return insert(ictx, msgs)
		}, bo, func(err error, d time.Duration) {
			s.setErr(err)
			log.Warn("clickhouse insert failed; retrying", zap.Error(err), zap.Duration("in", d))
			for _, m := range msgs {
				_ = m.InProgress() // keep the block ours while we retry
			}
		})
		if err != nil {
			// stopping with the block not inserted: hand it back at once
			for _, m := range msgs {
				_ = m.Nak()
			}
			return nil
		}
		s.setErr(nil)
		if err := msgs[len(msgs)-1].Ack(); err != nil {
			log.Warn("ack", zap.Error(err))
		}
	}
	return nil
}

const usageInsert = `INSERT INTO usage_records (stream_seq, idx, partition, carrier, record_id, iccid, account_id, plan_id,
 start_time, end_time, bytes_up, bytes_down, sequence, session_id, apn, rat, imei, cell_id, cycle_start, late,
 received_at, arrival_delay_s)`

func (s *Sink) insertUsage(ctx context.Context, msgs []jetstream.Msg) error {
	b, err := s.conn.PrepareBatch(ctx, usageInsert)
	if err != nil {
		return err
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	for _, m := range msgs {
		a, err := event.UnmarshalAccepted(m.Data())
		if err != nil {
			return backoff.Permanent(fmt.Errorf("decoding %s: %w", m.Subject(), err))
		}
		recv := time.Unix(a.ReceivedAt, 0)
		for _, r := range a.Rows {
			late := uint8(0)
			if r.Late {
				late = 1
			}
			if err := b.Append(a.Seq, uint32(r.Index), uint16(a.Partition), a.Carrier, r.RecordID, r.ICCID, r.AccountID, r.PlanID,
				time.Unix(r.Start, 0), time.Unix(r.End, 0), r.BytesUp, r.BytesDown, r.Sequence, r.SessionID, r.APN, r.RAT, r.IMEI, r.CellID,
				time.Unix(r.CycleStart, 0), late, recv, a.ReceivedAt-r.End); err != nil {
				return err
			}
		}
	}
	return b.Send()
}

const eventsInsert = `INSERT INTO card_events (event_id, stream_seq, type, iccid, account_id, time, reason, stop_reasons,
 status, cause, usage_bytes, quota_bytes, overshoot_bytes, cycle_start, cycle_end, record_bytes, detail,
 warning, amount_fen, balance_fen, operator, note, code, pool_id)`

func deref(v *uint64) uint64 {
	if v == nil {
		return 0
	}
	return *v
}

func derefInt(v *int64) int64 {
	if v == nil {
		return 0
	}
	return *v
}

func (s *Sink) insertEvents(ctx context.Context, msgs []jetstream.Msg) error {
	b, err := s.conn.PrepareBatch(ctx, eventsInsert)
	if err != nil {
		return err
	}
	defer b.Abort() //nolint:errcheck // no-op after Send
	for _, m := range msgs {
		var e event.Envelope
		if err := json.Unmarshal(m.Data(), &e); err != nil {
			return backoff.Permanent(fmt.Errorf("decoding %s: %w", m.Subject(), err))
		}
		meta, err := m.Metadata()
		if err != nil {
			return backoff.Permanent(err)
		}
		t, _ := time.Parse(time.RFC3339, e.Time)
		var cs, ce time.Time
		if e.Data.Cycle != nil {
			cs, _ = time.Parse(time.RFC3339, e.Data.Cycle.Start)
			ce, _ = time.Parse(time.RFC3339, e.Data.Cycle.End)
		} else {
			cs, ce = time.Unix(0, 0), time.Unix(0, 0)
		}
		d := &e.Data
		reasons := []string{}
		if d.StopReasons != nil {
			reasons = *d.StopReasons
		}
		if err := b.Append(e.ID, meta.Sequence.Stream, e.Type, d.ICCID, d.AccountID, t, d.Reason, reasons,
			d.Status, d.Cause, deref(d.UsageBytes), deref(d.QuotaBytes), deref(d.OvershootBytes), cs, ce,
			d.RecordBytes, d.Detail, d.Warning, d.AmountFen, derefInt(d.BalanceFen), d.Operator, d.Note, d.Code, d.PoolID); err != nil {
			return err
		}
	}
	return b.Send()
}
