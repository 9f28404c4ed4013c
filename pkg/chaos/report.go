package chaos

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Kinds of kill point.
const (
	KillSIGKILL = "kill -9"
	KillSIGTERM = "SIGTERM"
	KillStartup = "kill -9 during start-up"
)

// Report is what a campaign did and found. Failures lists every finding
// that fails the campaign; Failed is true when there is any.
type Report struct {
	Elapsed time.Duration
	Cards   int

	Kills           map[string]int  // kill points by kind
	Restarts        int             // starts after the first
	ReadyTimes      []time.Duration // time to ready of each restart that became ready
	NeverReady      []string        // restarts not ready within the bound, with the last /readyz reason
	HaltedRestarts  int             // of those, how many named a halted partition
	Halted          []string        // partitions seen halted while the process ran
	UnexpectedExits []string        // the process exited without being signalled
	DirtyShutdowns  []string        // SIGTERM that did not end in a clean exit 0
	CHStops         int             // ClickHouse stops and starts
	SinkRecoveries  []time.Duration // ClickHouse back up to /readyz 200
	CatchUp         time.Duration   // the final start ready to every consumer caught up

	Batches        uint64 // batches answered 2xx
	Records        uint64 // distinct records acknowledged (the ledger)
	Bytes          uint64
	Resent         uint64 // re-sent copies of acknowledged records, acknowledged again
	Rejected       uint64 // records a 2xx answer refused
	NoAnswer       int64  // attempts without an answer (retried)
	Unavailable    int64  // attempts answered 5xx or 429 (retried)
	Replayed       int64  // answers replayed for a retried Idempotency-Key
	Unresolved     int    // batches never answered before the deadline
	RatePerSec     float64
	TargetRate     float64
	CHRows         uint64
	CHDistinct     uint64
	RecordsLost    uint64 // acknowledged ids missing from ClickHouse
	RecordsDoubled uint64 // ClickHouse rows beyond one per acknowledged id
	CardsShort     int    // cards whose usage_bytes is below the ledger
	CardsOver      int    // cards whose usage_bytes is above the ledger
	BytesLost      uint64
	BytesDoubled   uint64
	CHMismatches   int // keys of usage_records, rollups or card_events that differ from the ledger
	CrossingCards  int // cards whose ledger usage went over their quota, with the auto stop on
	StoppedEvents  int // over-quota stopped events in EVENTS
	// EventMismatches counts cards whose over-quota stopped events are not
	// exactly one (crossing) or zero (not crossing).
	EventMismatches int

	// Checked is false when the final start never became ready, so the
	// ledger could not be checked.
	Checked bool

	Failures []string
}

func (r *Report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return len(r.Failures) > 0 }

// KillPoints is the number of kills of every kind.
func (r *Report) KillPoints() int {
	n := 0
	for _, v := range r.Kills {
		n += v
	}
	return n
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1))]
}

// Print writes the report for a person.
func (r *Report) Print(w io.Writer) {
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	fmt.Fprintf(w, "\n== chaos report (%s) ==\n", r.Elapsed.Round(time.Second))
	fmt.Fprintf(w, "kill points          %d (%s: %d, %s: %d, %s: %d)\n", r.KillPoints(),
		KillSIGKILL, r.Kills[KillSIGKILL], KillSIGTERM, r.Kills[KillSIGTERM], KillStartup, r.Kills[KillStartup])
	fmt.Fprintf(w, "clickhouse restarts  %d (ready again after its return: p50 %s, max %s)\n", r.CHStops,
		ms(percentile(r.SinkRecoveries, 0.5)), ms(percentile(r.SinkRecoveries, 1)))
	fmt.Fprintf(w, "restarts             %d (ready %d, killed in start-up %d, never ready %d, of which halted %d); halted while running %d\n",
		r.Restarts, len(r.ReadyTimes), r.Kills[KillStartup], len(r.NeverReady), r.HaltedRestarts, len(r.Halted))
	fmt.Fprintf(w, "time to ready        p50 %s, max %s\n", ms(percentile(r.ReadyTimes, 0.5)), ms(percentile(r.ReadyTimes, 1)))
	fmt.Fprintf(w, "final catch-up       %s (projector and sink, redeliveries included)\n", ms(r.CatchUp))
	fmt.Fprintf(w, "unexpected exits     %d; unclean SIGTERM exits %d\n", len(r.UnexpectedExits), len(r.DirtyShutdowns))
	fmt.Fprintf(w, "records acknowledged %d in %d batches (%.0f/s, target %.0f/s), %d bytes; %d re-sent copies\n",
		r.Records, r.Batches, r.RatePerSec, r.TargetRate, r.Bytes, r.Resent)
	fmt.Fprintf(w, "retried attempts     %d without an answer, %d answered 5xx/429; %d replayed answers; %d unresolved batches; %d rejected records\n",
		r.NoAnswer, r.Unavailable, r.Replayed, r.Unresolved, r.Rejected)
	if !r.Checked {
		fmt.Fprintln(w, "lost, doubled        NOT CHECKED: the final start never became ready")
	}
	fmt.Fprintf(w, "lost                 %d records (%d bytes on %d cards)\n", r.RecordsLost, r.BytesLost, r.CardsShort)
	fmt.Fprintf(w, "doubled              %d records (%d bytes on %d cards)\n", r.RecordsDoubled, r.BytesDoubled, r.CardsOver)
	fmt.Fprintf(w, "clickhouse           %d rows, %d distinct ids; %d mismatched keys (usage_records, rollups, card_events)\n",
		r.CHRows, r.CHDistinct, r.CHMismatches)
	fmt.Fprintf(w, "over-quota stops     %d events for %d crossing cards of %d; %d cards wrong\n",
		r.StoppedEvents, r.CrossingCards, r.Cards, r.EventMismatches)
	for _, s := range r.NeverReady {
		fmt.Fprintf(w, "  never ready: %s\n", s)
	}
	for _, s := range r.Halted {
		fmt.Fprintf(w, "  halted while running: %s\n", s)
	}
	for _, s := range r.UnexpectedExits {
		fmt.Fprintf(w, "  unexpected exit: %s\n", s)
	}
	for _, s := range r.DirtyShutdowns {
		fmt.Fprintf(w, "  unclean SIGTERM: %s\n", s)
	}
	if !r.Failed() {
		fmt.Fprintln(w, "result               PASS")
		return
	}
	fmt.Fprintf(w, "result               FAIL (%d findings)\n", len(r.Failures))
	for i, f := range r.Failures {
		if i == 30 {
			fmt.Fprintf(w, "  ... %d more\n", len(r.Failures)-30)
			break
		}
		fmt.Fprintf(w, "  - %s\n", strings.TrimSpace(f))
	}
}
