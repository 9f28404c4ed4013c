// Package clock writes time into the log. Cycle rollover, expiry and every
// other rule that depends on time act on the ticks it publishes to every
// partition, never on a read of the wall clock inside the fold.
//
// In real mode it ticks on the wall clock (each minute by default). In
// manual mode time moves only when Set is called (PUT /v1/clock), so a test
// or a demo can pass a month in a second.
package clock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
)

// ErrBackwards is returned by Set for a time before the log's current time.
var ErrBackwards = errors.New("the clock never moves back")

// ErrNotManual is returned by Set in real mode.
var ErrNotManual = errors.New("the clock is not in manual mode")

// Config configures a clock.
type Config struct {
	Partitions int
	Manual     bool
	Interval   time.Duration // real mode tick interval; default one minute
	// Start is where a manual clock starts on an empty log (Unix seconds);
	// 0: the wall clock's current minute.
	Start int64
}

// Clock is safe for concurrent use.
type Clock struct {
	cfg Config
	js  jetstream.JetStream
	log *zap.Logger

	mu  sync.Mutex // serializes Set and guards now
	now int64      // manual mode: the last tick published
}

// New returns a clock; call Start before use.
func New(js jetstream.JetStream, cfg Config, log *zap.Logger) *Clock {
	if cfg.Interval == 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Partitions <= 0 {
		panic("clock: Config.Partitions is required: the log's, from broker.Ensure or broker.Check")
	}
	return &Clock{cfg: cfg, js: js, log: log}
}

// Manual reports whether the clock is in manual mode.
func (c *Clock) Manual() bool { return c.cfg.Manual }

// Start reads the log's last tick. In manual mode with no tick yet, it
// publishes one at Config.Start, so the log has a time.
func (c *Clock) Start(ctx context.Context) error {
	stream, err := c.js.Stream(ctx, broker.StreamMeter)
	if err != nil {
		return fmt.Errorf("clock: %w", err)
	}
	last, err := stream.GetLastMsgForSubject(ctx, broker.ClockSubject(0))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fmt.Errorf("clock: reading the last tick: %w", err)
	default:
		var in card.Input
		if err := json.Unmarshal(last.Data, &in); err != nil {
			return fmt.Errorf("clock: decoding the last tick: %w", err)
		}
		c.now = in.At
	}
	if c.cfg.Manual && c.now == 0 {
		start := c.cfg.Start
		if start == 0 {
			start = time.Now().Truncate(time.Minute).Unix()
		}
		if _, err := c.publish(ctx, start); err != nil {
			return err
		}
	}
	c.log.Info("clock started", zap.Bool("manual", c.cfg.Manual), zap.Time("log_time", time.Unix(c.Now(), 0)))
	return nil
}

// Now is the log's time in Unix seconds: the last manual tick, or the wall
// clock in real mode. The ingest API stamps events with it.
func (c *Clock) Now() int64 {
	if !c.cfg.Manual {
		return time.Now().Unix()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves a manual clock to t and publishes the tick to every partition.
// It returns the highest log position of the ticks.
func (c *Clock) Set(ctx context.Context, t int64) (uint64, error) {
	if !c.cfg.Manual {
		return 0, ErrNotManual
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t < c.now {
		return 0, fmt.Errorf("%w: %s is before %s", ErrBackwards, time.Unix(t, 0).UTC().Format(time.RFC3339), time.Unix(c.now, 0).UTC().Format(time.RFC3339))
	}
	return c.publish(ctx, t)
}

// publish writes a tick at t to every partition; callers hold mu or run
// before the clock is shared. The message id makes the tick idempotent, so
// two clock instances publishing the same minute write it once.
func (c *Clock) publish(ctx context.Context, t int64) (uint64, error) {
	b, _ := json.Marshal(card.Input{Type: card.TypeClockTicked, ID: "tick-" + strconv.FormatInt(t, 10), At: t})
	var pos uint64
	for p := 0; p < c.cfg.Partitions; p++ {
		m := nats.NewMsg(broker.ClockSubject(p))
		m.Data = b
		m.Header.Set(jetstream.MsgIDHeader, "tick-"+strconv.FormatInt(t, 10)+"-"+strconv.Itoa(p))
		ack, err := c.js.PublishMsg(ctx, m)
		if err != nil {
			return 0, fmt.Errorf("clock: publishing tick: %w", err)
		}
		pos = max(pos, ack.Sequence)
	}
	c.now = t
	return pos, nil
}

// Run ticks on the wall clock until ctx ends; in manual mode it only waits.
func (c *Clock) Run(ctx context.Context) error {
	if c.cfg.Manual {
		<-ctx.Done()
		return nil
	}
	// Tick at once: after downtime, cycles that ended meanwhile roll over
	// now rather than at the next interval.
	c.mu.Lock()
	_, err := c.publish(ctx, time.Now().Truncate(time.Second).Unix())
	c.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		c.log.Warn("tick not published", zap.Error(err))
	}
	for {
		next := time.Now().Truncate(c.cfg.Interval).Add(c.cfg.Interval)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(next)):
		}
		c.mu.Lock()
		_, err := c.publish(ctx, next.Unix())
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			// the next tick carries the time forward; a missed one is harmless
			c.log.Warn("tick not published", zap.Error(err))
		}
	}
}
