package api

import (
	"fmt"
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// budget bounds the memory that every usage batch in flight holds
// together: its body, the chunks it is filling, the chunks the log has not
// acknowledged yet and its rejections waiting to be stored. A batch takes
// its share as it needs it, in steps, and a batch that cannot get it is
// answered 503 with Retry-After (what it published is stored; a retry
// adds nothing twice): many large batches at once slow clients down, they
// never take the process down with every batch in it.
type budget struct {
	sem   *semaphore.Weighted
	size  int64
	inUse prometheus.Gauge
	busy  prometheus.Counter
}

// leaseStep is how much a lease takes at a time beyond what it was asked:
// a batch asks the semaphore now and then, not at every record.
const leaseStep = 256 << 10

func newBudget(size int64, reg prometheus.Registerer) *budget {
	b := &budget{sem: semaphore.NewWeighted(size), size: size,
		inUse: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardmeter_ingest_memory_bytes",
			Help: "Memory held by the usage batches in flight, of the budget (--ingest-memory)."}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{Name: "cardmeter_ingest_memory_refusals_total",
			Help: "Usage batches answered 503 because the batches in flight held the whole memory budget."})}
	reg.MustRegister(b.inUse, b.busy, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cardmeter_ingest_memory_budget_bytes",
		Help: "The memory budget of the usage batches in flight (--ingest-memory)."}, func() float64 { return float64(size) }))
	return b
}

// lease is one batch's share of the budget. It is used by the batch's
// goroutine only, and returned whole by close.
type lease struct {
	b     *budget
	taken int64 // held from the semaphore
}

func (b *budget) lease() *lease { return &lease{b: b} }

// need makes the lease hold at least n bytes. A batch that alone would
// need more than the whole budget can never be taken: 413, not a retry.
func (l *lease) need(n int64) error {
	if n <= l.taken {
		return nil
	}
	if n > l.b.size {
		return problem(http.StatusRequestEntityTooLarge, "limit/batch-memory", "batch too large to hold",
			fmt.Sprintf("the batch needs more than the %d bytes all batches in flight may hold together (--ingest-memory): split it", l.b.size))
	}
	more := min(n-l.taken+leaseStep, l.b.size-l.taken)
	if !l.b.sem.TryAcquire(more) {
		l.b.busy.Inc()
		return &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/busy", "too many batches in flight",
			"the batches in flight hold the ingest memory budget; retry shortly (what this batch stored counts once)")}
	}
	l.taken += more
	l.b.inUse.Add(float64(more))
	return nil
}

func (l *lease) close() {
	if l.taken > 0 {
		l.b.sem.Release(l.taken)
		l.b.inUse.Sub(float64(l.taken))
		l.taken = 0
	}
}

// leaseReader reads a body of unknown length, growing its lease ahead of
// what it reads.
type leaseReader struct {
	r    io.Reader
	l    *lease
	read int64
}

func (lr *leaseReader) Read(p []byte) (int, error) {
	if err := lr.l.need(lr.read + int64(len(p))); err != nil {
		return 0, err
	}
	n, err := lr.r.Read(p)
	lr.read += int64(n)
	return n, err
}
