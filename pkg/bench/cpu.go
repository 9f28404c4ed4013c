package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is the CPU time used so far by this process (the whole
// pipeline and the load generator) and by a local ClickHouse server.
type cpuSample struct {
	self, clickhouse time.Duration
	chFound          bool
}

func sampleCPU() cpuSample {
	var s cpuSample
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.clickhouse, s.chFound = clickhouseCPU()
	return s
}

// clickhouseCPU reads the CPU time of a clickhouse-server process on this
// machine from /proc (Linux), when there is one.
func clickhouseCPU() (time.Duration, bool) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(b), "(clickhouse") {
			continue
		}
		// the fields after the command's closing parenthesis: utime and
		// stime are the 12th and 13th, in clock ticks (100 per second here)
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		return time.Duration(u+st) * 10 * time.Millisecond, true
	}
	return 0, false
}

// perRecord is the CPU each side spent per record between two samples.
func (s cpuSample) perRecord(later cpuSample, records int64) (self, clickhouse time.Duration) {
	if records <= 0 {
		return 0, 0
	}
	self = (later.self - s.self) / time.Duration(records)
	if s.chFound && later.chFound {
		clickhouse = (later.clickhouse - s.clickhouse) / time.Duration(records)
	}
	return self, clickhouse
}
