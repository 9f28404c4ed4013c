package app

import (
	"math"
	"os"
	"runtime/debug"
	"testing"

	"go.uber.org/zap"
)

// TuneGC sets the collector's target and a soft memory limit (by default
// half the machine's memory), and leaves each to GOGC and GOMEMLIMIT when
// they are set.
func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	unset := func(k string) {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}

	unset("GOGC")
	unset("GOMEMLIMIT")
	TuneGC(400, 0, zap.NewNop())
	if got := debug.SetGCPercent(100); got != 400 {
		t.Fatalf("target %d, want 400", got)
	}
	if lim, want := debug.SetMemoryLimit(math.MaxInt64), machineMemory()/2; want <= 0 || lim != want {
		t.Fatalf("limit %d, want half the machine's memory, %d", lim, want)
	}
	TuneGC(300, 512, zap.NewNop())
	if lim := debug.SetMemoryLimit(math.MaxInt64); lim != 512<<20 {
		t.Fatalf("limit %d, want 512 MiB", lim)
	}

	t.Setenv("GOGC", "100")
	t.Setenv("GOMEMLIMIT", "1GiB")
	debug.SetGCPercent(100)
	TuneGC(400, 512, zap.NewNop())
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("with GOGC set, the target became %d", got)
	}
	if lim := debug.SetMemoryLimit(math.MaxInt64); lim != math.MaxInt64 {
		t.Fatalf("with GOMEMLIMIT set, the limit became %d", lim)
	}
}
