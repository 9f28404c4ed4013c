package sink

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/pkg/event"
)

// UnitLayout is unit id's name, partitions and position key, for tests.
func (s *Sink) UnitLayout(id int) (name string, partitions []int, key string) {
	u := s.unit(id)
	return u.name, u.partitions, u.key
}

// SingleKey is partition p's position key as a unit of its own, for tests.
func (s *Sink) SingleKey(p int) string { return s.singleKey(p) }

// SetMigrationTimes sets how often the migration key is written again and
// when it is stale, for a test; it returns a function that restores them.
func SetMigrationTimes(refresh, stale time.Duration) (restore func()) {
	r, st := migrationRefresh, migrationStale
	migrationRefresh, migrationStale = refresh, stale
	return func() { migrationRefresh, migrationStale = r, st }
}

// UsageInserter inserts blocks of accepted chunks into usage_records as a
// usage unit's writer does, one writer across calls (benchmarks).
func UsageInserter(conn driver.Conn) func(ctx context.Context, chunks []*event.Accepted) (int, error) {
	w := &usageWriter{s: &Sink{conn: conn}}
	return func(ctx context.Context, chunks []*event.Accepted) (int, error) {
		block := make([]blockMsg, len(chunks))
		for i, a := range chunks {
			block[i] = blockMsg{accepted: a}
		}
		n, _, err := w.insertBlock(ctx, block, false)
		return n, err
	}
}
