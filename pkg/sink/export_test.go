package sink

import "time"

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
