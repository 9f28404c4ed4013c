// Package index is the exact record-id index of one partition, off the
// heap: immutable sorted segment files on local disk, each listed in the
// partition's checkpoint manifest once it is durable (and copied where
// another instance can fetch it). The fold's filters (pkg/card) send it
// only the few records they cannot rule out, so a lookup may cost a disk
// read; adding ids costs one sequential file write per checkpoint.
//
// Entries are grouped into generations by the start of the cycle they
// counted in, so that the ids of cycles every card has forgotten go by
// deleting whole files; within a generation, segments of similar size are
// merged (size-tiered), so a lookup reads few of them.
//
// An Index is safe for concurrent use: the fold looks up while the
// checkpoint writes, merges and installs segments.
package index

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"

	"github.com/cardmeter/cardmeter/pkg/card"
)

// SegmentInfo describes one segment file, as the manifest lists it.
type SegmentInfo struct {
	Name     string `json:"name"`
	Gen      int64  `json:"gen"`
	Entries  int    `json:"entries"`
	Bytes    int64  `json:"bytes"`
	MaxCycle int64  `json:"max_cycle"` // the latest cycle start among its entries
}

// GenSpan is the span of cycle starts one generation covers, in seconds.
const GenSpan = 8 * 86400

// Gen is the generation of an entry of the cycle starting at cycleStart.
func Gen(cycleStart int64) int64 {
	if cycleStart < 0 {
		return -1
	}
	return cycleStart / GenSpan
}

const (
	entrySize    = 20 // card (its provisioning order, 4 bytes), id hash (8), content and cycle (8)
	blockEntries = 256
	magic        = "CMIDX002"
	footerSize   = 8 + 8 + 8 + 8 + 4 // magic, entries, gen, max cycle, crc of the entries and sparse keys
)

// segment is an open segment file, mapped into memory read-only: a lookup
// reads the page cache without a system call.
type segment struct {
	info   SegmentInfo
	f      *os.File
	data   []byte // the mapped file
	sparse []byte // the first key of each block (card, id: 16 bytes), in the mapping: no heap
	lo, hi key
}

// overlaps reports whether the segment may hold entries of cycles that
// start in [from, to].
func (s *segment) overlaps(from, to int64) bool {
	return s.info.MaxCycle >= from && s.info.Gen*GenSpan <= to
}

func (s *segment) close() {
	if s.data != nil {
		_ = syscall.Munmap(s.data)
		s.data = nil
	}
	_ = s.f.Close()
}

type key struct{ card, id uint64 }

func (a key) less(b key) bool { return a.card < b.card || (a.card == b.card && a.id < b.id) }

// Index is one partition's exact record-id index.
type Index struct {
	dir string

	mu     sync.RWMutex
	segs   []*segment
	frozen [][]card.IndexEntry // taken from the fold, not yet in an installed segment
}

// Fetch copies a segment that is missing locally from where checkpoints
// keep it, into the file at path.
type Fetch func(name, path string) error

// Open opens the index in dir with exactly the live segments of a
// manifest: files that are not live (written after the manifest's
// checkpoint, or merged away) are removed, so the index is as of that
// checkpoint; live ones missing here are fetched.
func Open(dir string, live []SegmentInfo, fetch Fetch) (*Index, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	x := &Index{dir: dir}
	keep := map[string]bool{}
	for _, si := range live {
		keep[si.Name] = true
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	for _, e := range names {
		if !keep[e.Name()] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("index: removing %s: %w", e.Name(), err)
			}
		}
	}
	for _, si := range live {
		path := filepath.Join(dir, si.Name)
		fetched := false
		if st, err := os.Stat(path); err != nil || st.Size() != si.Bytes {
			fetched = true
			if fetch == nil {
				return nil, fmt.Errorf("index: segment %s is missing and there is nowhere to fetch it from", si.Name)
			}
			tmp := path + ".fetch"
			if err := fetch(si.Name, tmp); err != nil {
				_ = os.Remove(tmp)
				return nil, fmt.Errorf("index: fetching %s: %w", si.Name, err)
			}
			if err := os.Rename(tmp, path); err != nil {
				return nil, fmt.Errorf("index: %w", err)
			}
		}
		s, err := openSegment(path, si, fetched)
		if err != nil && !fetched && fetch != nil {
			// a local file of the right size that does not open (its footer
			// damaged): fetch it again, checked whole
			tmp := path + ".fetch"
			if ferr := fetch(si.Name, tmp); ferr != nil {
				_ = os.Remove(tmp)
				x.Close()
				return nil, fmt.Errorf("index: %w; fetching it again: %w", err, ferr)
			}
			if rerr := os.Rename(tmp, path); rerr != nil {
				x.Close()
				return nil, fmt.Errorf("index: %w", rerr)
			}
			s, err = openSegment(path, si, true)
		}
		if err != nil {
			x.Close()
			return nil, err
		}
		x.segs = append(x.segs, s)
	}
	return x, nil
}

// Close closes the segment files.
func (x *Index) Close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, s := range x.segs {
		s.close()
	}
	x.segs = nil
}

// Path is the file of a segment.
func (x *Index) Path(name string) string { return filepath.Join(x.dir, name) }

// Segments lists the installed segments.
func (x *Index) Segments() []SegmentInfo {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]SegmentInfo, len(x.segs))
	for i, s := range x.segs {
		out[i] = s.info
	}
	return out
}

// Stats is the index's size: entries and bytes on disk, and entries not
// yet in a segment. Its heap is a few words per segment: the segments'
// entries and sparse keys are mapped.
func (x *Index) Stats() (entries int, diskBytes int64, frozen int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, s := range x.segs {
		entries += s.info.Entries
		diskBytes += s.info.Bytes
	}
	for _, f := range x.frozen {
		frozen += len(f)
	}
	return entries, diskBytes, frozen
}

// Freeze makes entries taken from the fold (card.Partition.TakeIDs,
// sorted) visible to Get until a segment holding them is installed.
func (x *Index) Freeze(es []card.IndexEntry) {
	if len(es) == 0 {
		return
	}
	x.mu.Lock()
	x.frozen = append(x.frozen, es)
	x.mu.Unlock()
}

// Get finds the entry of a card's record id among those of cycles that
// start in [from, to]: of several (an id forgotten and counted again), the
// one of the latest cycle. Segments that hold no such cycle are not read.
func (x *Index) Get(cardKey, id uint64, from, to int64) (card.Lookup, error) {
	k := key{cardKey, id}
	var best card.Lookup
	take := func(seen uint64) {
		if !best.Found || card.SeenCycleStart(seen) > card.SeenCycleStart(best.Seen) {
			best = card.Lookup{Seen: seen, Found: true}
		}
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, es := range x.frozen {
		i := sort.Search(len(es), func(i int) bool { return !(key{es[i].Card, es[i].ID}).less(k) })
		for ; i < len(es) && es[i].Card == cardKey && es[i].ID == id; i++ {
			take(es[i].Seen)
		}
	}
	for _, s := range x.segs {
		if !s.overlaps(from, to) {
			continue
		}
		if seen, ok := s.get(k); ok {
			take(seen)
		}
	}
	return best, nil
}

func (s *segment) get(k key) (uint64, bool) {
	if k.less(s.lo) || s.hi.less(k) {
		return 0, false
	}
	// the last block whose first key is ≤ k
	b := sort.Search(len(s.sparse)/16, func(i int) bool { return k.less(s.sparseKey(i)) }) - 1
	if b < 0 {
		return 0, false
	}
	n := min(blockEntries, s.info.Entries-b*blockEntries)
	buf := s.data[b*blockEntries*entrySize : (b*blockEntries+n)*entrySize]
	i := sort.Search(n, func(i int) bool { return !entryKey(buf[i*entrySize:]).less(k) })
	var seen uint64
	found := false
	for ; i < n && entryKey(buf[i*entrySize:]) == k; i++ {
		if v := binary.LittleEndian.Uint64(buf[i*entrySize+12:]); !found || card.SeenCycleStart(v) > card.SeenCycleStart(seen) {
			seen, found = v, true
		}
	}
	return seen, found
}

func (s *segment) sparseKey(i int) key {
	return key{binary.LittleEndian.Uint64(s.sparse[i*16:]), binary.LittleEndian.Uint64(s.sparse[i*16+8:])}
}

func entryKey(b []byte) key {
	return key{uint64(binary.LittleEndian.Uint32(b)), binary.LittleEndian.Uint64(b[4:])}
}

// WriteFrozen writes the entries frozen so far into new segment files, one
// per generation, named after seq (the checkpoint's sequence), synced to
// disk. They serve lookups only once installed; until then the frozen
// entries do. It returns how many frozen sets it wrote, for Install.
func (x *Index) WriteFrozen(seq uint64) ([]SegmentInfo, int, error) {
	x.mu.RLock()
	sets := slices.Clone(x.frozen)
	x.mu.RUnlock()
	if len(sets) == 0 {
		return nil, 0, nil
	}
	// split by generation, each sized up front (a checkpoint's entries run
	// to millions: grown by append they cost more than writing them)
	counts := map[int64]int{}
	for _, es := range sets {
		for i := range es {
			counts[Gen(es[i].CycleStart())]++
		}
	}
	gens := make([]int64, 0, len(counts))
	for g := range counts {
		gens = append(gens, g)
	}
	slices.Sort(gens)
	byGen := make(map[int64][]card.IndexEntry, len(gens))
	if len(sets) == 1 && len(gens) == 1 {
		byGen[gens[0]] = sets[0] // one sorted set of one generation: as it is
	} else {
		for _, g := range gens {
			byGen[g] = make([]card.IndexEntry, 0, counts[g])
		}
		for _, es := range sets {
			for i := range es {
				g := Gen(es[i].CycleStart())
				byGen[g] = append(byGen[g], es[i])
			}
		}
	}
	var out []SegmentInfo
	for _, g := range gens {
		es := byGen[g]
		if len(sets) > 1 {
			slices.SortStableFunc(es, card.CompareEntries) // each set is sorted; together they are not
		}
		name := fmt.Sprintf("g%d-%016x.seg", g, seq)
		si, err := x.write(name, g, func(emit func(card.IndexEntry) error) error {
			for _, e := range es {
				if err := emit(e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		out = append(out, si)
	}
	return out, len(sets), nil
}

// write writes a segment file from entries given in key order.
func (x *Index) write(name string, gen int64, entries func(emit func(card.IndexEntry) error) error) (SegmentInfo, error) {
	path := filepath.Join(x.dir, name)
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return SegmentInfo{}, fmt.Errorf("index: %w", err)
	}
	defer os.Remove(path + ".tmp") //nolint:errcheck // gone after the rename
	defer f.Close()                //nolint:errcheck // closed below on success
	crc := crc32.NewIEEE()
	w := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<20)
	si := SegmentInfo{Name: name, Gen: gen}
	var sparse []byte
	var e24 [entrySize]byte
	err = entries(func(e card.IndexEntry) error {
		if si.Entries%blockEntries == 0 {
			sparse = binary.LittleEndian.AppendUint64(sparse, e.Card)
			sparse = binary.LittleEndian.AppendUint64(sparse, e.ID)
		}
		if e.Card > math.MaxUint32 {
			return fmt.Errorf("card key %d does not fit 32 bits", e.Card)
		}
		binary.LittleEndian.PutUint32(e24[:], uint32(e.Card))
		binary.LittleEndian.PutUint64(e24[4:], e.ID)
		binary.LittleEndian.PutUint64(e24[12:], e.Seen)
		si.Entries++
		si.MaxCycle = max(si.MaxCycle, e.CycleStart())
		_, err := w.Write(e24[:])
		return err
	})
	if err == nil {
		_, err = w.Write(sparse)
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return SegmentInfo{}, fmt.Errorf("index: writing %s: %w", name, err)
	}
	var foot [footerSize]byte
	copy(foot[:], magic)
	binary.LittleEndian.PutUint64(foot[8:], uint64(si.Entries))
	binary.LittleEndian.PutUint64(foot[16:], uint64(gen))
	binary.LittleEndian.PutUint64(foot[24:], uint64(si.MaxCycle))
	binary.LittleEndian.PutUint32(foot[32:], crc.Sum32())
	if _, err := f.Write(foot[:]); err != nil {
		return SegmentInfo{}, fmt.Errorf("index: writing %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return SegmentInfo{}, fmt.Errorf("index: syncing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return SegmentInfo{}, fmt.Errorf("index: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return SegmentInfo{}, fmt.Errorf("index: %w", err)
	}
	si.Bytes = int64(si.Entries)*entrySize + int64(len(sparse)) + footerSize
	return si, syncDir(x.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	defer d.Close() //nolint:errcheck // read-only
	if err := d.Sync(); err != nil {
		return fmt.Errorf("index: syncing %s: %w", dir, err)
	}
	return nil
}

// openSegment opens a segment file and checks it against its info: size
// and footer, and with verify the checksum of the whole file (for a file
// that came over the network; one this process or its predecessor wrote
// and synced before a manifest named it is read as is, so that a restart
// costs what the cards cost, not a read of every id).
func openSegment(path string, si SegmentInfo, verify bool) (*segment, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	s := &segment{info: si, f: f}
	if err := s.load(verify); err != nil {
		s.close()
		return nil, fmt.Errorf("index: segment %s: %w", si.Name, err)
	}
	return s, nil
}

func (s *segment) load(verify bool) error {
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != s.info.Bytes || st.Size() < footerSize {
		return fmt.Errorf("%d bytes, the manifest says %d", st.Size(), s.info.Bytes)
	}
	var foot [footerSize]byte
	if _, err := s.f.ReadAt(foot[:], st.Size()-footerSize); err != nil {
		return err
	}
	n := int(binary.LittleEndian.Uint64(foot[8:]))
	if string(foot[:8]) != magic || n != s.info.Entries {
		return errors.New("bad footer")
	}
	blocks := (n + blockEntries - 1) / blockEntries
	if int64(n)*entrySize+int64(blocks)*16+footerSize != st.Size() {
		return errors.New("size does not match its entries")
	}
	if verify {
		crc := crc32.NewIEEE()
		if _, err := io.Copy(crc, io.NewSectionReader(s.f, 0, st.Size()-footerSize)); err != nil {
			return err
		}
		if crc.Sum32() != binary.LittleEndian.Uint32(foot[32:]) {
			return errors.New("checksum mismatch")
		}
	}
	if n == 0 {
		return nil
	}
	if s.data, err = syscall.Mmap(int(s.f.Fd()), 0, n*entrySize+blocks*16, syscall.PROT_READ, syscall.MAP_SHARED); err != nil {
		return fmt.Errorf("mapping: %w", err)
	}
	s.sparse = s.data[n*entrySize:]
	s.lo, s.hi = s.sparseKey(0), entryKey(s.data[(n-1)*entrySize:])
	return nil
}

// Install makes added segments live, removes the named ones, and lets go
// of the first `frozen` frozen sets (now in added). The caller installs
// only what a manifest it stored lists, after storing it.
func (x *Index) Install(added []SegmentInfo, removed []string, frozen int) error {
	var opened []*segment
	for _, si := range added {
		s, err := openSegment(x.Path(si.Name), si, false)
		if err != nil {
			for _, o := range opened {
				o.close()
			}
			return err
		}
		opened = append(opened, s)
	}
	drop := map[string]bool{}
	for _, n := range removed {
		drop[n] = true
	}
	x.mu.Lock()
	var keep []*segment
	var gone []*segment
	for _, s := range x.segs {
		if drop[s.info.Name] {
			gone = append(gone, s)
		} else {
			keep = append(keep, s)
		}
	}
	x.segs = append(keep, opened...)
	x.frozen = slices.Clone(x.frozen[min(frozen, len(x.frozen)):]) // the written sets go with the old array
	x.mu.Unlock()
	for _, s := range gone {
		s.close()
		if err := os.Remove(x.Path(s.info.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("index: %w", err)
		}
	}
	return nil
}

// Droppable lists the segments whose every entry is of a cycle before
// floor (card.Partition.IndexFloor): no card remembers them.
func (x *Index) Droppable(floor int64) []SegmentInfo {
	var out []SegmentInfo
	for _, si := range x.Segments() {
		if si.MaxCycle < floor {
			out = append(out, si)
		}
	}
	return out
}

// mergeFanIn is how many segments of one size tier are merged into one.
const mergeFanIn = 4

// tier groups segments of similar size: a factor of 4 apart.
func tier(entries int) int { return bits.Len(uint(entries)) / 2 }

// MergeCandidates returns segments to merge into one: mergeFanIn or more
// of one generation and size tier, or nil. Merging keeps the number of
// segments a lookup reads logarithmic in the entries, and each entry is
// rewritten only once per tier.
func (x *Index) MergeCandidates() []SegmentInfo {
	type gt struct {
		gen  int64
		tier int
	}
	groups := map[gt][]SegmentInfo{}
	var keys []gt
	for _, si := range x.Segments() {
		k := gt{si.Gen, tier(si.Entries)}
		if groups[k] == nil {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], si)
	}
	for _, k := range keys {
		if len(groups[k]) >= mergeFanIn {
			return groups[k]
		}
	}
	return nil
}

// Merge writes the entries of the given installed segments into one new
// segment named after seq, in key order. It does not install it.
func (x *Index) Merge(in []SegmentInfo, seq uint64) (SegmentInfo, error) {
	if len(in) == 0 {
		return SegmentInfo{}, errors.New("index: nothing to merge")
	}
	var readers []*entryReader
	defer func() {
		for _, r := range readers {
			r.close()
		}
	}()
	for _, si := range in {
		r, err := newEntryReader(x.Path(si.Name), si.Entries)
		if err != nil {
			return SegmentInfo{}, err
		}
		readers = append(readers, r)
	}
	// named after its inputs too: two merges at one checkpoint differ
	h := crc32.NewIEEE()
	for _, si := range in {
		_, _ = h.Write([]byte(si.Name))
	}
	name := fmt.Sprintf("g%d-%016x-m%08x.seg", in[0].Gen, seq, h.Sum32())
	return x.write(name, in[0].Gen, func(emit func(card.IndexEntry) error) error {
		for {
			best := -1
			for i, r := range readers {
				if r.ok && (best < 0 || card.CompareEntries(r.cur, readers[best].cur) < 0) {
					best = i
				}
			}
			if best < 0 {
				return nil
			}
			if err := emit(readers[best].cur); err != nil {
				return err
			}
			if err := readers[best].next(); err != nil {
				return err
			}
		}
	})
}

// entryReader reads a segment's entries in order.
type entryReader struct {
	f    *os.File
	r    *bufio.Reader
	left int
	cur  card.IndexEntry
	ok   bool
}

func newEntryReader(path string, entries int) (*entryReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	r := &entryReader{f: f, r: bufio.NewReaderSize(f, 256<<10), left: entries}
	return r, r.next()
}

func (r *entryReader) next() error {
	if r.left == 0 {
		r.ok = false
		return nil
	}
	var b [entrySize]byte
	if _, err := io.ReadFull(r.r, b[:]); err != nil {
		return fmt.Errorf("index: reading %s: %w", r.f.Name(), err)
	}
	r.left--
	r.cur = card.IndexEntry{Card: uint64(binary.LittleEndian.Uint32(b[:])), ID: binary.LittleEndian.Uint64(b[4:]), Seen: binary.LittleEndian.Uint64(b[12:])}
	r.ok = true
	return nil
}

func (r *entryReader) close() { _ = r.f.Close() }

// Add puts entries into the index at once, for a caller with no manifest
// to keep (a rebuild, a measurement): it writes them as segments, installs
// them, drops the segments no card remembers (before floor) and merges.
func (x *Index) Add(seq uint64, es []card.IndexEntry, floor int64) error {
	x.Freeze(es)
	added, n, err := x.WriteFrozen(seq)
	if err != nil {
		return err
	}
	var drop []string
	for _, si := range x.Droppable(floor) {
		drop = append(drop, si.Name)
	}
	if err := x.Install(added, drop, n); err != nil {
		return err
	}
	for in := x.MergeCandidates(); in != nil; in = x.MergeCandidates() {
		merged, err := x.Merge(in, seq)
		if err != nil {
			return err
		}
		names := make([]string, len(in))
		for i, si := range in {
			names[i] = si.Name
		}
		if err := x.Install([]SegmentInfo{merged}, names, 0); err != nil {
			return err
		}
	}
	return nil
}
