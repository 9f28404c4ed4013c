package card

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// foldedPieces folds a generated log and checkpoints it twice: a base
// midway, a delta at the end. It returns the state and the pieces.
func foldedPieces(t testing.TB, seed uint64, n int) (*Partition, [][]byte) {
	log := genLog(seed, n)
	p := NewPartition()
	fold(t, p, log[:n/2])
	base, err := p.MarshalBase(50)
	if err != nil {
		t.Fatal(err)
	}
	p.TakeIDs(nil)
	fold(t, p, log[n/2:])
	delta, _, err := p.MarshalDelta(50)
	if err != nil {
		t.Fatal(err)
	}
	return p, append(base, delta...)
}

// A state written as JSON (versions 5 and 6, before binary pieces) reads
// as the same state as its binary piece.
func TestJSONPiecesStillRead(t *testing.T) {
	p := NewPartition()
	fold(t, p, genLog(3, 8000))
	s := p.head(false)
	s.Version = lastJSONVersion
	for _, c := range p.order {
		s.Cards = append(s.Cards, c.snapshot(modeWhole))
	}
	old, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if old[0] != '{' || len(s.Cards) == 0 {
		t.Fatalf("not a JSON state of cards: %.40q", old)
	}
	q, err := UnmarshalSnapshot(old)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := p.MarshalSnapshot()
	if got, _ := q.MarshalSnapshot(); !bytes.Equal(got, want) {
		t.Fatal("a JSON state read back differs from the state")
	}
	if len(want)*3 > len(old)*2 {
		t.Errorf("the binary state is %d bytes, its JSON %d: expected at most two thirds", len(want), len(old))
	}
}

// A piece cut short, or of a version this build does not know, is an
// error naming what is wrong, never a panic or a partial state.
func TestDamagedPiecesAreRefused(t *testing.T) {
	_, pieces := foldedPieces(t, 5, 4000)
	piece := pieces[len(pieces)-1]
	for _, n := range []int{0, 3, len(pieceMagic) + 1, len(piece) / 2, len(piece) - 1} {
		if err := NewRestorer().Add(piece[:n]); err == nil {
			t.Errorf("a piece cut to %d of %d bytes was read", n, len(piece))
		}
	}
	if err := NewRestorer().Add(append(bytes.Clone(piece), 0)); err == nil {
		t.Error("a piece with a byte after its last card was read")
	}
	future := append(bytes.Clone(pieceMagic), snapshotVersion+1)
	if err := NewRestorer().Add(append(future, piece[len(pieceMagic)+1:]...)); err == nil || !bytes.Contains([]byte(err.Error()), []byte(fmt.Sprint("version ", snapshotVersion+1))) {
		t.Errorf("a piece of version %d: %v", snapshotVersion+1, err)
	}
}

// FuzzRestorePiece: no bytes panic the restore of a piece, and whatever
// reads is a state that encodes and reads back the same. The seeds are
// real pieces (testdata/fuzz/FuzzRestorePiece; `go test -run
// TestPieceSeeds` with CARDMETER_UPDATE_SEEDS=1 writes them anew).
func FuzzRestorePiece(f *testing.F) {
	f.Fuzz(func(t *testing.T, piece []byte) {
		r := NewRestorer()
		if r.Add(piece) != nil {
			return
		}
		p, err := r.Finish()
		if err != nil {
			return
		}
		b, err := p.MarshalSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		q, err := UnmarshalSnapshot(b)
		if err != nil {
			t.Fatalf("a state read from a piece does not read back: %v", err)
		}
		if b2, _ := q.MarshalSnapshot(); !bytes.Equal(b, b2) {
			t.Fatal("a state read from a piece reads back different")
		}
	})
}

var update = os.Getenv("CARDMETER_UPDATE_SEEDS") != ""

// TestPieceSeeds keeps FuzzRestorePiece's seed corpus real: with
// CARDMETER_UPDATE_SEEDS=1 it writes pieces of a generated log there;
// without, it checks the seeds still read (a format change that forgets
// them fails here).
func TestPieceSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzRestorePiece")
	if update {
		_, pieces := foldedPieces(t, 11, 600)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, b := range pieces[:min(len(pieces), 4)] {
			seed := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("piece-%d", i)), []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// the seeds this build writes, then those of version 7 (before the
	// device binding), which this build still reads: each set restores
	// as one partition
	for _, glob := range []string{"piece-*", "v7-piece-*"} {
		restoreSeeds(t, dir, glob)
	}
}

func restoreSeeds(t *testing.T, dir, glob string) {
	files, _ := filepath.Glob(filepath.Join(dir, glob))
	if len(files) == 0 {
		t.Fatalf("no seeds %s in %s", glob, dir)
	}
	r := NewRestorer()
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.SplitN(b, []byte("\n"), 3)
		q := bytes.TrimSuffix(bytes.TrimPrefix(lines[1], []byte("[]byte(")), []byte(")"))
		s, err := strconv.Unquote(string(q))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := r.Add([]byte(s)); err != nil {
			t.Fatalf("seed %s no longer reads: %v", name, err)
		}
	}
	p, err := r.Finish()
	if err != nil {
		t.Fatalf("seeds %s: %v", glob, err)
	}
	if p.Cards() == 0 {
		t.Fatalf("seeds %s restore no card", glob)
	}
	// and what they restore writes (in this build's version) and reads back the same
	b, err := p.MarshalSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	q, err := UnmarshalSnapshot(b)
	if err != nil || q.Cards() != p.Cards() {
		t.Fatalf("seeds %s rewritten: %v, %d cards of %d", glob, err, q.Cards(), p.Cards())
	}
}
