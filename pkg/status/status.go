// Package status is how the running roles say how they are: each process
// writes a report per role it runs to the status bucket every Every, and
// GET /v1/status (and `cardmeter status`, and the console's pipeline
// page) reads them all, wherever the roles run. A report not written for
// broker.StatusTTL is gone: its process stopped or lost NATS.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// Every is how often a process writes its reports, by default.
const Every = 10 * time.Second

// Report is one role of one process, as it last said.
type Report struct {
	Role     string    `json:"role"`
	Instance string    `json:"instance"`
	At       time.Time `json:"at"`
	Every    float64   `json:"every_seconds"` // how often it reports: a report 3 times older is stale
	Ready    bool      `json:"ready"`
	Detail   string    `json:"detail,omitempty"` // why not ready
	// what the role knows; the others are nil
	Projector *Projector `json:"projector,omitempty"`
	Sink      *Sink      `json:"sink,omitempty"`
	Ingest    *Ingest    `json:"ingest,omitempty"`
}

// Projector is a projector's partitions and how far behind it is.
type Projector struct {
	LagMessages uint64      `json:"lag_messages"`
	LagSeconds  float64     `json:"lag_seconds"`
	Partitions  []Partition `json:"partitions"`
}

// Partition is one partition a projector holds.
type Partition struct {
	ID    int    `json:"partition"`
	Ready bool   `json:"ready"`
	Cards *int   `json:"cards,omitempty"` // as of its last census
	Error string `json:"error,omitempty"`
	// LagMessages: messages of the partition not yet folded; LagSeconds:
	// how long the oldest of them has waited (0 when none).
	LagMessages uint64  `json:"lag_messages"`
	LagSeconds  float64 `json:"lag_seconds"`
	// CheckpointAgeSeconds is the time since its last checkpoint was
	// stored (or it was restored).
	CheckpointAgeSeconds *float64 `json:"checkpoint_age_seconds,omitempty"`
}

// Sink is a sink's units and backlog.
type Sink struct {
	Units        []int  `json:"units"`
	Pending      uint64 `json:"pending_messages"`
	ClickHouseUp bool   `json:"clickhouse_up"`
}

// Ingest is an API's intake over the last interval.
type Ingest struct {
	RecordsPerSecond  float64 `json:"records_per_second"`
	RejectedPerSecond float64 `json:"rejected_per_second"`
}

// Source makes a role's report now.
type Source struct {
	Role   string
	Report func() Report
}

// Publish writes each source's report every interval (0: Every) until ctx
// ends, under the key <role>.<instance> (instance made safe for a key).
func Publish(ctx context.Context, js jetstream.JetStream, instance string, every time.Duration, sources []Source, log *zap.Logger) {
	var kv jetstream.KeyValue
	warned := false
	if every <= 0 {
		every = Every
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if kv == nil {
			var err error
			if kv, err = js.KeyValue(ctx, broker.BucketStatus); err != nil {
				kv = nil
				if !warned && ctx.Err() == nil {
					// once: an upgraded deployment whose setup has not run yet
					log.Warn("no status bucket: this process's status is not reported (GET /v1/status, cardmeter status) until `cardmeter setup` makes it",
						zap.String("bucket", broker.BucketStatus), zap.Error(err))
					warned = true
				}
			}
		}
		if kv != nil {
			for _, s := range sources {
				r := s.Report()
				r.Role, r.Instance, r.At, r.Every = s.Role, instance, time.Now().UTC(), every.Seconds()
				b, _ := json.Marshal(r)
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if _, err := kv.Put(pctx, s.Role+"."+Key(instance), b); err != nil && ctx.Err() == nil {
					log.Debug("writing the status report", zap.String("role", s.Role), zap.Error(err))
				}
				cancel()
			}
		}
		select {
		case <-ctx.Done():
			// gone: its reports go at once, not a minute later
			if kv != nil {
				dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				for _, s := range sources {
					_ = kv.Delete(dctx, s.Role+"."+Key(instance))
				}
				cancel()
			}
			return
		case <-t.C:
		}
	}
}

// Key makes an instance name safe as a key token.
func Key(instance string) string {
	var b strings.Builder
	for _, r := range instance {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Read returns every report in the bucket, by role and instance.
func Read(ctx context.Context, js jetstream.JetStream) ([]Report, error) {
	kv, err := js.KeyValue(ctx, broker.BucketStatus)
	if err != nil {
		return nil, err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Report
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, err
		}
		var r Report
		// a report three intervals old is of a process that stopped
		// reporting (the bucket drops it after a minute anyway)
		if json.Unmarshal(e.Value(), &r) == nil && (r.Every == 0 || time.Since(r.At).Seconds() < 3*r.Every) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Role != out[j].Role {
			return out[i].Role < out[j].Role
		}
		return out[i].Instance < out[j].Instance
	})
	return out, nil
}
