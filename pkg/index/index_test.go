package index

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cardmeter/cardmeter/pkg/card"
)

// seen packs a content hash and a cycle start as card.Partition does: the
// cycle in 15-minute units in the low 24 bits.
func seen(content uint64, cycle int64) uint64 { return content&^(1<<24-1) | uint64(cycle/900) }

type model map[[2]uint64]uint64

func (m model) add(es []card.IndexEntry) {
	for _, e := range es {
		k := [2]uint64{e.Card, e.ID}
		if old, ok := m[k]; !ok || e.CycleStart() >= card.SeenCycleStart(old) {
			m[k] = e.Seen
		}
	}
}

func batch(r *rand.Rand, n int, cycles []int64) []card.IndexEntry {
	es := make([]card.IndexEntry, 0, n)
	for i := 0; i < n; i++ {
		es = append(es, card.IndexEntry{Card: r.Uint64N(50), ID: r.Uint64N(5000),
			Seen: seen(r.Uint64(), cycles[r.IntN(len(cycles))])})
	}
	slices.SortFunc(es, card.CompareEntries)
	return slices.CompactFunc(es, func(a, b card.IndexEntry) bool { return a.Card == b.Card && a.ID == b.ID })
}

func check(t *testing.T, x *Index, m model, r *rand.Rand) {
	t.Helper()
	for i := 0; i < 3000; i++ {
		k := [2]uint64{r.Uint64N(50), r.Uint64N(5000)}
		got, err := x.Get(k[0], k[1], math.MinInt64, math.MaxInt64)
		if err != nil {
			t.Fatal(err)
		}
		want, ok := m[k]
		if got.Found != ok || (ok && got.Seen != want) {
			t.Fatalf("Get(%d, %d) = %+v, want %x %v", k[0], k[1], got, want, ok)
		}
	}
}

// Frozen, written, merged and reopened, the index answers as a map of its
// entries does (the latest cycle of a key wins); reopening with an older
// manifest's segments rolls back what came after; dropping a generation
// forgets just its entries.
func TestIndexAgreesWithAMap(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	cycles := []int64{1700000000 - 1700000000%900, 1702592000 - 1702592000%900, 1705270400 - 1705270400%900}
	x, err := Open(dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	var manifests [][]SegmentInfo
	var models []model
	for seq := uint64(1); seq <= 40; seq++ {
		// as the fold does: a key gets a new entry only once its card has
		// forgotten the old one, so of a later cycle
		es := slices.DeleteFunc(batch(r, 500, cycles), func(e card.IndexEntry) bool {
			old, ok := m[[2]uint64{e.Card, e.ID}]
			return ok && card.SeenCycleStart(old) >= e.CycleStart()
		})
		x.Freeze(es)
		m.add(es)
		check(t, x, m, r) // frozen entries answer before any file exists
		added, n, err := x.WriteFrozen(seq)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.Install(added, nil, n); err != nil {
			t.Fatal(err)
		}
		for in := x.MergeCandidates(); in != nil; in = x.MergeCandidates() {
			merged, err := x.Merge(in, seq)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, si := range in {
				names = append(names, si.Name)
			}
			if err := x.Install([]SegmentInfo{merged}, names, 0); err != nil {
				t.Fatal(err)
			}
		}
		check(t, x, m, r)
		manifests = append(manifests, x.Segments())
		models = append(models, clone(m))
	}
	if len(x.Segments()) > 3*3*mergeFanIn {
		t.Errorf("%d segments after 40 checkpoints: merging does not keep up", len(x.Segments()))
	}
	// a crash after writing the next checkpoint's segment and a merge, but
	// before storing a manifest with them: the restart opens the last
	// manifest's segments, and the files written after it go
	last, lastModel := manifests[len(manifests)-1], models[len(models)-1]
	x.Freeze(batch(r, 500, cycles))
	if _, _, err := x.WriteFrozen(41); err != nil {
		t.Fatal(err)
	}
	if _, err := x.Merge(last[:2], 41); err != nil {
		t.Fatal(err)
	}
	x.Close()
	if x, err = Open(dir, last, nil); err != nil {
		t.Fatal(err)
	}
	check(t, x, lastModel, r)
	files, _ := os.ReadDir(dir)
	if len(files) != len(last) {
		t.Fatalf("%d files after the restart, the manifest lists %d", len(files), len(last))
	}
	models[24] = lastModel
	// drop the oldest cycle's generation
	drop := x.Droppable(cycles[1])
	if len(drop) == 0 {
		t.Fatal("nothing droppable below the second cycle")
	}
	var names []string
	for _, si := range drop {
		names = append(names, si.Name)
		if si.MaxCycle >= cycles[1] {
			t.Fatalf("segment %s holds cycle %d, not droppable below %d", si.Name, si.MaxCycle, cycles[1])
		}
	}
	if err := x.Install(nil, names, 0); err != nil {
		t.Fatal(err)
	}
	for k, v := range models[24] {
		if card.SeenCycleStart(v) < cycles[1] {
			delete(models[24], k)
		}
	}
	// a key whose newest entry is of a later cycle keeps it; one only in the
	// dropped cycle is gone
	check(t, x, models[24], r)
	x.Close()
}

func clone(m model) model {
	c := model{}
	for k, v := range m {
		c[k] = v
	}
	return c
}

// A segment that is damaged or missing is fetched again; one that cannot
// be fetched fails the open rather than answering wrongly.
func TestIndexFetchesMissingAndDamagedSegments(t *testing.T) {
	dir, store := t.TempDir(), t.TempDir()
	r := rand.New(rand.NewPCG(3, 4))
	x, err := Open(dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	es := batch(r, 2000, []int64{1700000100})
	x.Freeze(es)
	added, n, err := x.WriteFrozen(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Install(added, nil, n); err != nil {
		t.Fatal(err)
	}
	x.Close()
	name := added[0].Name
	b, _ := os.ReadFile(filepath.Join(dir, name))
	_ = os.WriteFile(filepath.Join(store, name), b, 0o644)
	// a truncated file is caught by its size, a damaged fetched one by its
	// checksum
	_ = os.WriteFile(filepath.Join(dir, name), b[:len(b)-1], 0o644)
	if _, err := Open(dir, added, nil); err == nil {
		t.Fatal("a truncated segment opened")
	}
	damaged := func(name, path string) error {
		c := append([]byte(nil), b...)
		c[100] ^= 0xff
		return os.WriteFile(path, c, 0o644)
	}
	if _, err := Open(dir, added, damaged); err == nil {
		t.Fatal("a damaged segment opened")
	}
	fetched := 0
	fetch := func(name, path string) error {
		fetched++
		b, err := os.ReadFile(filepath.Join(store, name))
		if err != nil {
			return err
		}
		return os.WriteFile(path, b, 0o644)
	}
	// a local file of the right size whose footer is damaged is fetched again
	bad := append([]byte(nil), b...)
	copy(bad[len(bad)-footerSize:], "XXXXXXXX")
	_ = os.WriteFile(filepath.Join(dir, name), bad, 0o644)
	if x, err = Open(dir, added, fetch); err != nil {
		t.Fatal(err)
	}
	x.Close()
	if fetched != 1 {
		t.Fatalf("a damaged local segment: fetched %d times", fetched)
	}
	_ = os.Remove(filepath.Join(dir, name))
	if x, err = Open(dir, added, fetch); err != nil {
		t.Fatal(err)
	}
	m := model{}
	m.add(es)
	check(t, x, m, r)
	if fetched != 2 {
		t.Fatalf("fetched %d times", fetched)
	}
	x.Close()
}
