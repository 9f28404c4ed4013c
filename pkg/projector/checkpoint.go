package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/index"
)

// Manifest names a partition's checkpoint: the log sequence it is as of,
// the state's pieces (a base, then deltas in order) and the index's
// segments, all in the object store. It lives in the checkpoints bucket
// under the partition's key and changes only by compare-and-set, so one
// owner (the holder of the current epoch) writes it at a time: another
// instance that acquires the partition bumps the epoch, and the old owner's
// next checkpoint fails its compare-and-set and ends its life.
type Manifest struct {
	Version    int                 `json:"version"`
	Partition  int                 `json:"partition"`
	Partitions int                 `json:"partitions"`
	Seq        uint64              `json:"seq"`
	Epoch      uint64              `json:"epoch"`
	Owner      string              `json:"owner"`
	Base       []string            `json:"base,omitempty"`
	BaseBytes  int64               `json:"base_bytes"`
	Deltas     []string            `json:"deltas,omitempty"`
	DeltaBytes int64               `json:"delta_bytes"`
	Segments   []index.SegmentInfo `json:"segments,omitempty"`
	Written    time.Time           `json:"written"`
	// Saved is when the checkpoint it names was stored (Written also
	// moves when a new owner takes the partition).
	Saved time.Time `json:"saved,omitempty"`
}

const manifestVersion = 1

// ManifestKey is a partition's key in the checkpoints bucket.
func ManifestKey(part int) string { return fmt.Sprintf("partition-%d", part) }

// errLostOwnership: another instance acquired the partition since.
var errLostOwnership = errors.New("the partition's manifest changed under its owner: another instance holds it now")

// maxDeltas bounds the deltas a restore reads after the base: past it, or
// once the deltas outweigh the base, the next checkpoint is a new base.
const maxDeltas = 128

// store keeps one partition's checkpoints.
type store struct {
	p    *Projector
	part int
	objs jetstream.ObjectStore
	kv   jetstream.KeyValue
	log  *zap.Logger
	m    Manifest // the manifest as last stored; only the saving goroutine changes it while a save runs
	rev  uint64
}

// retry runs op with backoff until it succeeds, fails for good
// (backoff.Permanent), or ctx ends; every failure counts in the metrics
// and, while they go on, shows in the log. Each attempt has a deadline of
// its own, longer for more bytes: a JetStream request whose reply is lost
// (the connection dropped after it went out) waits until its context
// ends, and must not hold up a checkpoint or a restore for longer.
func (s *store) retry(ctx context.Context, what string, bytes int64, op func(ctx context.Context) error) error {
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(2*time.Minute)), ctx)
	limit := attemptTimeout + time.Duration(bytes/(4<<20))*time.Second // and a second per 4 MiB
	return backoff.RetryNotify(func() error {
		actx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		return op(actx)
	}, bo, func(err error, d time.Duration) {
		s.p.m.checkpointErrs.Inc()
		s.log.Warn(what+" failed; retrying", zap.Error(err), zap.Duration("in", d))
	})
}

// attemptTimeout bounds one attempt of a request to JetStream (plus time
// for the bytes of a transfer).
const attemptTimeout = 20 * time.Second

// acquire takes the partition: it reads the manifest (or starts one) and
// stores it back with the next epoch, by compare-and-set.
func (s *store) acquire(ctx context.Context) error {
	return s.retry(ctx, "acquiring the partition", 0, func(ctx context.Context) error {
		m := Manifest{Version: manifestVersion, Partition: s.part, Partitions: s.p.cfg.Partitions}
		var rev uint64
		e, err := s.kv.Get(ctx, ManifestKey(s.part))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal(e.Value(), &m); err != nil {
				return backoff.Permanent(fmt.Errorf("%w: manifest of partition %d: %w", errStuck, s.part, err))
			}
			if m.Version != manifestVersion {
				return backoff.Permanent(fmt.Errorf("%w: manifest version %d, this build reads %d", errStuck, m.Version, manifestVersion))
			}
			rev = e.Revision()
		}
		m.Epoch++
		m.Owner = s.p.cfg.Owner
		b, _ := json.Marshal(&m)
		if rev == 0 {
			rev, err = s.kv.Create(ctx, ManifestKey(s.part), b)
		} else {
			rev, err = s.kv.Update(ctx, ManifestKey(s.part), b, rev)
		}
		if err != nil {
			return err // another instance got there first: read again
		}
		s.m, s.rev = m, rev
		return nil
	})
}

// release marks the partition free in its manifest (no owner), after its
// last checkpoint, by compare-and-set: the next owner acquires it without
// waiting for anything. A failure is harmless: the next owner's acquire
// bumps the epoch over it all the same.
func (s *store) release(ctx context.Context) {
	m := s.m
	m.Owner = ""
	b, _ := json.Marshal(&m)
	if rev, err := s.kv.Update(ctx, ManifestKey(s.part), b, s.rev); err != nil {
		s.log.Warn("releasing the partition", zap.Error(err))
	} else {
		s.m, s.rev = m, rev
	}
}

// readState reads the state's pieces in order, one at a time.
func (s *store) readState(ctx context.Context) (*card.Partition, error) {
	rs := card.NewRestorer()
	for _, name := range append(slices.Clone(s.m.Base), s.m.Deltas...) {
		var b []byte
		err := s.retry(ctx, "reading a checkpoint piece", s.m.BaseBytes+s.m.DeltaBytes, func(ctx context.Context) error {
			var err error
			b, err = s.objs.GetBytes(ctx, name)
			if errors.Is(err, jetstream.ErrObjectNotFound) {
				return backoff.Permanent(fmt.Errorf("%w: checkpoint piece %s is missing: %w", errStuck, name, err))
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if err := rs.Add(b); err != nil {
			return nil, fmt.Errorf("%w: checkpoint piece %s: %w", errStuck, name, err)
		}
	}
	state, err := rs.Finish()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errStuck, err)
	}
	return state, nil
}

// fetchSegment copies an index segment from the object store to a file.
func (s *store) fetchSegment(ctx context.Context) index.Fetch {
	sizes := map[string]int64{}
	for _, si := range s.m.Segments {
		sizes[si.Name] = si.Bytes
	}
	return func(name, path string) error {
		return s.retry(ctx, "fetching an index segment", sizes[name], func(ctx context.Context) error {
			err := FetchFile(ctx, s.objs, s.segmentObject(name), path, sizes[name])
			if errors.Is(err, jetstream.ErrObjectNotFound) {
				return backoff.Permanent(fmt.Errorf("%w: index segment %s is missing: %w", errStuck, name, err))
			}
			return err
		})
	}
}

// FilePart is the most a file puts in one object: a large file is stored
// as objects NAME.0, NAME.1... of this size, so that one object never has
// more chunks in flight than a publisher may have outstanding, and a
// restore reads bounded pieces one at a time.
const FilePart = 32 << 20

// StoreFile puts the file at path, of size bytes, in the object store
// under name, in parts of FilePart.
func StoreFile(ctx context.Context, objs jetstream.ObjectStore, name, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return backoff.Permanent(err)
	}
	defer f.Close() //nolint:errcheck // read-only
	for i, off := 0, int64(0); off < size || i == 0; i, off = i+1, off+FilePart {
		part := io.NewSectionReader(f, off, min(FilePart, size-off))
		if _, err := objs.Put(ctx, jetstream.ObjectMeta{Name: fmt.Sprintf("%s.%d", name, i)}, part); err != nil {
			return err
		}
	}
	return nil
}

// FetchFile writes the file StoreFile stored under name, of size bytes, to
// path, reading one part at a time.
func FetchFile(ctx context.Context, objs jetstream.ObjectStore, name, path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return backoff.Permanent(err)
	}
	for i, off := 0, int64(0); off < size || i == 0; i, off = i+1, off+FilePart {
		obj, err := objs.Get(ctx, fmt.Sprintf("%s.%d", name, i))
		if err != nil {
			_ = f.Close()
			return err
		}
		_, err = io.Copy(f, obj)
		_ = obj.Close()
		if err != nil {
			_ = f.Close()
			return err
		}
	}
	return f.Close()
}

// segmentObjects names the objects of a stored segment.
func (s *store) segmentObjects(si index.SegmentInfo) []string {
	var out []string
	for i, off := 0, int64(0); off < si.Bytes || i == 0; i, off = i+1, off+FilePart {
		out = append(out, fmt.Sprintf("%s.%d", s.segmentObject(si.Name), i))
	}
	return out
}

func (s *store) segmentObject(name string) string { return fmt.Sprintf("p%d/index/%s", s.part, name) }

// baseDue reports whether the next checkpoint should be a new base. Read
// it only while no save runs.
func (s *store) baseDue() bool {
	return len(s.m.Base) == 0 || len(s.m.Deltas) >= maxDeltas || s.m.DeltaBytes > s.m.BaseBytes
}

// saveJob is a checkpoint taken from the fold, to store.
type saveJob struct {
	seq    uint64
	base   bool
	pieces [][]byte
	cards  int   // in a delta
	floor  int64 // index entries of cycles before it are forgotten by every card
}

// save stores a checkpoint: the index's new segment files (written here,
// copied to the object store), the state's pieces, then the manifest that
// names them all; only then the index serves from the new segments and
// what the checkpoint replaced is deleted. Then it drops index
// generations no card remembers and merges segments, each under a
// manifest of its own.
func (s *store) save(ctx context.Context, idx *index.Index, job saveJob) error {
	start := time.Now()
	added, frozen, err := idx.WriteFrozen(job.seq)
	if err != nil {
		return err
	}
	var bytes int64
	for _, si := range added {
		if err := s.putFile(ctx, si, idx.Path(si.Name)); err != nil {
			return err
		}
		bytes += si.Bytes
	}
	m := s.m
	m.Segments = append(slices.Clone(m.Segments), added...)
	var names []string
	for i, b := range job.pieces {
		name := fmt.Sprintf("p%d/delta-%016x-%04d", s.part, job.seq, i)
		if job.base {
			name = fmt.Sprintf("p%d/base-%016x-%04d", s.part, job.seq, i)
		}
		if err := s.retry(ctx, "storing a checkpoint piece", int64(len(b)), func(ctx context.Context) error {
			_, err := s.objs.PutBytes(ctx, name, b)
			return err
		}); err != nil {
			return err
		}
		names = append(names, name)
		bytes += int64(len(b))
	}
	var obsolete []string
	if job.base {
		obsolete = append(slices.Clone(m.Base), m.Deltas...)
		m.Base, m.Deltas, m.BaseBytes, m.DeltaBytes = names, nil, 0, 0
		for _, b := range job.pieces {
			m.BaseBytes += int64(len(b))
		}
	} else {
		m.Deltas = append(slices.Clone(m.Deltas), names...)
		for _, b := range job.pieces {
			m.DeltaBytes += int64(len(b))
		}
	}
	m.Seq, m.Saved = job.seq, time.Now().UTC()
	if err := s.putManifest(ctx, m); err != nil {
		return err
	}
	if err := idx.Install(added, nil, frozen); err != nil {
		return err
	}
	s.deleteObjects(ctx, obsolete)
	if pt := s.p.parts[s.part]; pt != nil {
		pt.mu.Lock()
		pt.checkpointAt = time.Now()
		pt.mu.Unlock()
	}
	s.p.m.checkpointSecs.Observe(time.Since(start).Seconds())
	s.p.m.checkpointB.Add(float64(bytes))
	s.log.Debug("checkpoint stored", zap.Uint64("seq", job.seq), zap.Bool("base", job.base), zap.Int("cards", job.cards),
		zap.Int64("bytes", bytes), zap.Int("segments", len(added)), zap.Duration("took", time.Since(start)))
	return s.maintain(ctx, idx, job)
}

// maintain drops the index segments no card remembers and merges segments
// of one generation and size, so that a lookup reads few of them.
func (s *store) maintain(ctx context.Context, idx *index.Index, job saveJob) error {
	if drop := idx.Droppable(job.floor); len(drop) > 0 {
		if err := s.replaceSegments(ctx, idx, drop, nil); err != nil {
			return err
		}
		s.log.Info("index generations dropped", zap.Int("segments", len(drop)), zap.Int64("before_cycle", job.floor))
	}
	for i := 0; i < 4; i++ {
		in := idx.MergeCandidates()
		if in == nil {
			return nil
		}
		merged, err := idx.Merge(in, job.seq)
		if err != nil {
			return err
		}
		if err := s.putFile(ctx, merged, idx.Path(merged.Name)); err != nil {
			return err
		}
		s.p.m.checkpointB.Add(float64(merged.Bytes))
		if err := s.replaceSegments(ctx, idx, in, []index.SegmentInfo{merged}); err != nil {
			return err
		}
	}
	return nil
}

// replaceSegments stores a manifest without the old segments and with the
// new ones, then applies that to the index and deletes the old objects.
func (s *store) replaceSegments(ctx context.Context, idx *index.Index, old, added []index.SegmentInfo) error {
	gone := map[string]bool{}
	var names, objects []string
	for _, si := range old {
		gone[si.Name] = true
		names = append(names, si.Name)
		objects = append(objects, s.segmentObjects(si)...)
	}
	m := s.m
	m.Segments = slices.DeleteFunc(slices.Clone(m.Segments), func(si index.SegmentInfo) bool { return gone[si.Name] })
	m.Segments = append(m.Segments, added...)
	if err := s.putManifest(ctx, m); err != nil {
		return err
	}
	if err := idx.Install(added, names, 0); err != nil {
		return err
	}
	s.deleteObjects(ctx, objects)
	return nil
}

func (s *store) putFile(ctx context.Context, si index.SegmentInfo, path string) error {
	return s.retry(ctx, "storing an index segment", si.Bytes, func(ctx context.Context) error {
		return StoreFile(ctx, s.objs, s.segmentObject(si.Name), path, si.Bytes)
	})
}

// putManifest stores m by compare-and-set on the revision this owner
// stored last; a mismatch means another instance took the partition.
func (s *store) putManifest(ctx context.Context, m Manifest) error {
	m.Written = time.Now().UTC()
	b, _ := json.Marshal(&m)
	return s.retry(ctx, "storing the checkpoint manifest", 0, func(ctx context.Context) error {
		rev, err := s.kv.Update(ctx, ManifestKey(s.part), b, s.rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return backoff.Permanent(fmt.Errorf("%w (epoch %d)", errLostOwnership, s.m.Epoch))
		}
		if err != nil {
			return err
		}
		s.m, s.rev = m, rev
		return nil
	})
}

// collectGarbage deletes the partition's objects its manifest does not
// name: what a life that ended between storing them and storing the
// manifest left behind. Best effort: garbage costs space, not harm.
func (s *store) collectGarbage(ctx context.Context) {
	infos, err := s.objs.List(ctx)
	if err != nil {
		if !errors.Is(err, jetstream.ErrNoObjectsFound) {
			s.log.Warn("listing checkpoint objects", zap.Error(err))
		}
		return
	}
	named := map[string]bool{}
	for _, n := range append(slices.Clone(s.m.Base), s.m.Deltas...) {
		named[n] = true
	}
	for _, si := range s.m.Segments {
		for _, o := range s.segmentObjects(si) {
			named[o] = true
		}
	}
	prefix := fmt.Sprintf("p%d/", s.part)
	var garbage []string
	for _, info := range infos {
		if strings.HasPrefix(info.Name, prefix) && !named[info.Name] {
			garbage = append(garbage, info.Name)
		}
	}
	if len(garbage) > 0 {
		s.deleteObjects(ctx, garbage)
		s.log.Info("checkpoint objects no manifest names, deleted", zap.Int("objects", len(garbage)))
	}
}

// deleteObjects removes objects a stored manifest no longer names. A
// failure leaves garbage, not harm: it is logged.
func (s *store) deleteObjects(ctx context.Context, names []string) {
	for _, n := range names {
		if err := s.objs.Delete(ctx, n); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			s.log.Warn("deleting an obsolete checkpoint object", zap.String("object", n), zap.Error(err))
		}
	}
}
