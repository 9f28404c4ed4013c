package push

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// bar shows a file's progress: bytes of the file, records, rate and ETA.
type bar struct {
	pb      *progressbar.ProgressBar
	w       io.Writer
	file    string
	start   time.Time
	records int
	base    int
}

func newBar(cfg *Config, file string, size, done int64, records int) *bar {
	b := &bar{w: cfg.Progress, file: file, start: time.Now(), base: records, records: records}
	if cfg.Progress == nil {
		return b
	}
	b.pb = progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(cfg.Progress),
		progressbar.OptionSetDescription(file),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowDescriptionAtLineEnd(),
	)
	_ = b.pb.Set64(done)
	return b
}

func (b *bar) update(done int64, records int) {
	b.records = records
	if b.pb == nil {
		return
	}
	rate := float64(records-b.base) / max(time.Since(b.start).Seconds(), 0.001)
	b.pb.Describe(fmt.Sprintf("%s: %d records, %.0f records/s", b.file, records, rate))
	_ = b.pb.Set64(done)
}

func (b *bar) finish() {
	if b.pb != nil {
		_ = b.pb.Finish()
		fmt.Fprintln(b.w)
	}
}
