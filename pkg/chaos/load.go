package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// record is a generated usage record.
type record struct {
	id       string
	card     int
	start    int64
	end      int64
	up, down uint64
}

// generator makes the campaign's records. A record is a pure function of
// (seed, writer, number): a re-sent record is made again byte for byte,
// so it is the same record (same id, same content), never a conflict.
type generator struct {
	seed  uint64
	now   int64      // the manual clock's time: records end before it
	cards [][]int    // per writer: the indices of its cards
	cum   [][]uint64 // per writer: cumulative weights of its cards
}

func newGenerator(seed uint64, now int64, f *fleet, writers int) *generator {
	g := &generator{seed: seed, now: now, cards: make([][]int, writers), cum: make([][]uint64, writers)}
	for i, c := range f.cards {
		w := i % writers
		var prev uint64
		if n := len(g.cum[w]); n > 0 {
			prev = g.cum[w][n-1]
		}
		g.cards[w] = append(g.cards[w], i)
		g.cum[w] = append(g.cum[w], prev+c.Weight)
	}
	return g
}

// splitmix64 is a good 64-bit mixer (Steele, Lea, Flood 2014).
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// record returns writer w's record number n: a card of the writer picked
// by weight, a session that started 1 to 72 hours before the clock's time
// (so in the current cycle, over several days), 1 to 10 minutes long.
func (g *generator) record(w int, n uint64) record {
	h := splitmix64(g.seed ^ uint64(w)<<56 ^ n)
	h2 := splitmix64(h)
	cum := g.cum[w]
	pick := h % cum[len(cum)-1]
	i := sort.Search(len(cum), func(i int) bool { return cum[i] > pick })
	start := g.now - 3600 - int64(h2%(71*3600))
	return record{
		id:    "w" + strconv.Itoa(w) + "-" + strconv.FormatUint(n, 10),
		card:  g.cards[w][i],
		start: start,
		end:   start + 60 + int64((h2>>32)%540),
		up:    100 + (h>>20)%5000,
		down:  1000 + (h2>>12)%50000,
	}
}

// ledgerKey is a card and a day (Asia/Shanghai, UTC+8 all year) of a
// session's start: the finest grain any check needs.
type ledgerKey struct {
	card int
	day  int64 // days since 1970-01-01 in UTC+8
}

func dayOf(unix int64) int64 { return (unix + 8*3600) / 86400 }

// sums are usage totals.
type sums struct{ up, down, records uint64 }

func (s *sums) add(o sums) { s.up += o.up; s.down += o.down; s.records += o.records }

// ledger is what the system acknowledged: every record of every batch
// answered 2xx (less the records the answer rejected), each record id
// once. It is safe for concurrent use.
type ledger struct {
	mu       sync.Mutex
	by       map[ledgerKey]*sums
	total    sums
	resent   uint64 // re-sent copies of acknowledged records in acknowledged batches
	batches  uint64
	rejected uint64
	firstRej string
}

func newLedger() *ledger { return &ledger{by: map[ledgerKey]*sums{}} }

func (l *ledger) addBatch(part map[ledgerKey]*sums, resent uint64, rejected uint64, firstRej string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, v := range part {
		s := l.by[k]
		if s == nil {
			s = &sums{}
			l.by[k] = s
		}
		s.add(*v)
		l.total.add(*v)
	}
	l.resent += resent
	l.batches++
	l.rejected += rejected
	if l.firstRej == "" {
		l.firstRej = firstRej
	}
}

// perCard sums the ledger by card.
func (l *ledger) perCard(n int) []sums {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]sums, n)
	for k, v := range l.by {
		out[k.card].add(*v)
	}
	return out
}

// writer posts batches of one carrier at its share of the target rate,
// one batch in flight at a time, so that every earlier batch of it was
// acknowledged when it re-sends one of their records.
type writer struct {
	id       int
	carrier  string
	csv      bool // CSV, else NDJSON
	batch    int  // records per batch
	rate     float64
	resendPM int // re-sent records per thousand
	seed     uint64
	gen      *generator
	fleet    *fleet
	api      *apiClient
	ledger   *ledger
	log      *zap.Logger

	next uint64 // the number of the next new record
}

// maxBacklog is how far a writer may fall behind its schedule and still
// catch up.
const maxBacklog = 30 * time.Second

// errUnresolved is a batch that never got an answer before the deadline:
// its records may or may not count.
type errUnresolved struct {
	batch   string
	records int
	err     error
}

func (e *errUnresolved) Error() string {
	return fmt.Sprintf("batch %s (%d records) got no answer: %v", e.batch, e.records, e.err)
}

// run writes batches until stop is closed, then returns once its batch in
// flight is answered. ctx bounds everything: a batch still unanswered when
// it ends is returned as *errUnresolved.
func (w *writer) run(ctx context.Context, stop <-chan struct{}) error {
	interval := time.Duration(float64(time.Second) * float64(w.batch) / w.rate)
	due := time.Now()
	for b := 0; ; b++ {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(due)):
		}
		// A writer behind its schedule (the API was down) catches up at
		// full speed, as a feed with a backlog does; a backlog of more than
		// maxBacklog is dropped, so that it stays bounded.
		if due = due.Add(interval); time.Until(due) < -maxBacklog {
			due = time.Now().Add(-maxBacklog)
		}
		key := fmt.Sprintf("chaos-%d-%s-%d", w.seed, w.carrier, b)
		recs, resent := w.makeBatch(b)
		body := w.encode(recs)
		ctype := "application/x-ndjson"
		if w.csv {
			ctype = "text/csv"
		}
		ans, err := w.api.do(ctx, http.MethodPost, "/v1/usage?wait=false&carrier="+w.carrier, ctype, key, body, http.StatusUnprocessableEntity)
		if err != nil {
			if _, ok := err.(*statusError); ok {
				return fmt.Errorf("writer %d: %w", w.id, err)
			}
			return &errUnresolved{batch: key, records: len(recs), err: err}
		}
		rejected, firstRej, err := rejectedIndices(ans)
		if err != nil {
			return fmt.Errorf("writer %d: batch %s: %w", w.id, key, err)
		}
		part := map[ledgerKey]*sums{}
		for i, r := range recs {
			if rejected[i] || i >= len(recs)-resent {
				continue // refused, or a re-sent copy already in the ledger
			}
			k := ledgerKey{r.card, dayOf(r.start)}
			s := part[k]
			if s == nil {
				s = &sums{}
				part[k] = s
			}
			s.add(sums{r.up, r.down, 1})
		}
		w.ledger.addBatch(part, uint64(resent), uint64(len(rejected)), firstRej)
	}
}

// makeBatch returns batch b's records: w.batch new ones, then re-sent
// copies of records of earlier batches (all acknowledged: one batch is in
// flight at a time), and how many of those copies there are.
func (w *writer) makeBatch(b int) ([]record, int) {
	first := w.next
	recs := make([]record, 0, w.batch+w.batch*w.resendPM/1000+1)
	for i := 0; i < w.batch; i++ {
		recs = append(recs, w.gen.record(w.id, w.next))
		w.next++
	}
	resent := 0
	if first > 0 {
		for i := 0; i < w.batch*w.resendPM/1000; i++ {
			n := splitmix64(w.seed^uint64(b)<<20^uint64(i)) % first
			recs = append(recs, w.gen.record(w.id, n))
			resent++
		}
	}
	return recs, resent
}

func (w *writer) encode(recs []record) []byte {
	buf := make([]byte, 0, len(recs)*130)
	if w.csv {
		buf = append(buf, "record_id,iccid,start_time,end_time,bytes_up,bytes_down\n"...)
	}
	for _, r := range recs {
		iccid := w.fleet.cards[r.card].ICCID
		st := time.Unix(r.start, 0).UTC().Format(time.RFC3339)
		en := time.Unix(r.end, 0).UTC().Format(time.RFC3339)
		if w.csv {
			buf = fmt.Appendf(buf, "%s,%s,%s,%s,%d,%d\n", r.id, iccid, st, en, r.up, r.down)
		} else {
			buf = fmt.Appendf(buf, `{"record_id":%q,"iccid":%q,"start_time":%q,"end_time":%q,"bytes_up":%d,"bytes_down":%d}`+"\n",
				r.id, iccid, st, en, r.up, r.down)
		}
	}
	return buf
}

// rejectedIndices reads a 422's rejected records (problem+json "errors",
// each with the record's index in the batch).
func rejectedIndices(a answer) (map[int]bool, string, error) {
	if a.status != http.StatusUnprocessableEntity {
		return nil, "", nil
	}
	var p struct {
		Errors []struct {
			Index    int    `json:"index"`
			RecordID string `json:"record_id"`
			Reason   string `json:"reason"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(a.body, &p); err != nil || len(p.Errors) == 0 {
		return nil, "", fmt.Errorf("a 422 without readable rejections: %s", truncate(a.body, 300))
	}
	out := map[int]bool{}
	first := ""
	for _, e := range p.Errors {
		out[e.Index] = true
		if first == "" {
			first = e.RecordID + ": " + e.Reason
		}
	}
	return out, first, nil
}
