package sink

// UnitLayout is unit id's name, partitions and position key, for tests.
func (s *Sink) UnitLayout(id int) (name string, partitions []int, key string) {
	u := s.unit(id)
	return u.name, u.partitions, u.key
}

// SingleKey is partition p's position key as a unit of its own, for tests.
func (s *Sink) SingleKey(p int) string { return s.singleKey(p) }
