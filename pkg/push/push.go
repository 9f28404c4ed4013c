// Package push is the client side of usage ingest: `cardmeter push` streams
// large CSV or NDJSON files (plain or gzip) to the API in batches, retries
// with backoff, resumes an interrupted file without counting anything
// twice, shows progress, and sums up what was accepted and rejected.
package push

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Config configures a push.
type Config struct {
	URL          string // the API's base URL
	Token        string // bearer token ("" for an open API)
	Carrier      string // ?carrier=, when the token may push for several
	BatchRecords int    // records per batch; default 10000
	Format       string // csv, ndjson or "" to tell by the file name
	StateDir     string // where resume state is kept; default: beside each file
	Wait         bool   // ask the API to report what the projector made of each batch
	Progress     io.Writer
	Client       *http.Client
	// MaxElapsed bounds the retries of one batch; default 15 minutes.
	MaxElapsed time.Duration
	// AfterBatch, when set, is called after each acknowledged batch; an
	// error stops the push there (as an interruption would).
	AfterBatch func(file string, batch int) error
}

// Summary is what a push did.
type Summary struct {
	Files      int
	Batches    int
	Records    int
	Accepted   int
	Duplicates int // record ids counted before
	Pending    int // stored, the projector's verdicts not in when the batch was answered
	Conflicts  int
	Late       int
	Rejected   int
	Reasons    map[string]int // "field: reason" -> count
	Examples   []Rejected     // the first rejected records, with file and line
}

// Rejected is one rejected record, located in its file.
type Rejected struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	RecordID string `json:"record_id"`
	Field    string `json:"field"`
	Reason   string `json:"reason"`
}

const maxExamples = 20

func (s *Summary) add(o *Summary) {
	s.Files += o.Files
	s.Batches += o.Batches
	s.Records += o.Records
	s.Accepted += o.Accepted
	s.Duplicates += o.Duplicates
	s.Pending += o.Pending
	s.Conflicts += o.Conflicts
	s.Late += o.Late
	s.Rejected += o.Rejected
	for k, v := range o.Reasons {
		if s.Reasons == nil {
			s.Reasons = map[string]int{}
		}
		s.Reasons[k] += v
	}
	for _, e := range o.Examples {
		if len(s.Examples) < maxExamples {
			s.Examples = append(s.Examples, e)
		}
	}
}

// state is what survives an interruption: how far the file was pushed.
type state struct {
	FileID  string  `json:"file_id"`
	Offset  int64   `json:"offset"` // bytes of the (decompressed) data after the header, acknowledged
	Line    int     `json:"line"`   // file line of the next record
	Done    bool    `json:"done"`
	Summary Summary `json:"summary"`
}

// Run pushes each file in turn and returns the sum of what happened.
func Run(ctx context.Context, cfg Config, files []string) (Summary, error) {
	if cfg.BatchRecords <= 0 {
		cfg.BatchRecords = 10000
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 5 * time.Minute}
	}
	if cfg.MaxElapsed == 0 {
		cfg.MaxElapsed = 15 * time.Minute
	}
	var total Summary
	for _, f := range files {
		s, err := pushFile(ctx, &cfg, f)
		total.add(&s)
		if err != nil {
			return total, fmt.Errorf("%s: %w", f, err)
		}
	}
	return total, nil
}

// fileID fingerprints a file by its size and first MiB: the same file
// resumes, a changed one starts over.
func fileID(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\n", st.Size())
	if _, err := io.CopyN(h, f, 1<<20); err != nil && err != io.EOF {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)[:12]), st.Size(), nil
}

func (cfg *Config) statePath(file string) string {
	if cfg.StateDir == "" {
		return file + ".push-state"
	}
	return filepath.Join(cfg.StateDir, filepath.Base(file)+".push-state")
}

func loadState(path, id string) state {
	b, err := os.ReadFile(path)
	var st state
	if err != nil || json.Unmarshal(b, &st) != nil || st.FileID != id {
		return state{FileID: id}
	}
	return st
}

// save writes the state atomically: a crash leaves the old or the new.
func (st *state) save(path string) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func formatOf(cfg *Config, file string) (string, error) {
	if cfg.Format != "" {
		return cfg.Format, nil
	}
	name := strings.TrimSuffix(strings.ToLower(file), ".gz")
	switch {
	case strings.HasSuffix(name, ".csv"):
		return "csv", nil
	case strings.HasSuffix(name, ".ndjson"), strings.HasSuffix(name, ".jsonl"):
		return "ndjson", nil
	}
	return "", fmt.Errorf("cannot tell the format from the name: use --format csv|ndjson")
}

// countingReader counts the bytes read through it (the raw file, for progress).
type countingReader struct {
	r io.Reader
	n *int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

func pushFile(ctx context.Context, cfg *Config, file string) (Summary, error) {
	id, size, err := fileID(file)
	if err != nil {
		return Summary{}, err
	}
	format, err := formatOf(cfg, file)
	if err != nil {
		return Summary{}, err
	}
	statePath := cfg.statePath(file)
	st := loadState(statePath, id)
	if st.Done {
		fmt.Fprintf(progressOut(cfg), "%s: already pushed (state in %s)\n", file, statePath)
		return st.Summary, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return st.Summary, err
	}
	defer f.Close()
	var rawRead int64
	var in io.Reader = bufio.NewReaderSize(countingReader{f, &rawRead}, 1<<20)
	if peek, _ := in.(*bufio.Reader).Peek(2); len(peek) == 2 && peek[0] == 0x1f && peek[1] == 0x8b {
		zr, err := gzip.NewReader(in)
		if err != nil {
			return st.Summary, err
		}
		defer zr.Close()
		in = zr
	}
	br := bufio.NewReaderSize(in, 1<<20)
	var header []byte
	line := 1
	if format == "csv" {
		if header, err = br.ReadBytes('\n'); err != nil && len(header) == 0 {
			return st.Summary, fmt.Errorf("no CSV header: %w", err)
		}
		if len(header) > 0 && header[len(header)-1] != '\n' {
			header = append(header, '\n')
		}
		line = 2
	}
	if st.Offset > 0 {
		if _, err := io.CopyN(io.Discard, br, st.Offset); err != nil {
			return st.Summary, fmt.Errorf("resuming at byte %d: %w", st.Offset, err)
		}
		line = st.Line
		fmt.Fprintf(progressOut(cfg), "%s: resuming after %d records\n", file, st.Summary.Records)
	}
	if st.Summary.Files == 0 {
		st.Summary.Files = 1
	}
	bar := newBar(cfg, file, size, rawRead, st.Summary.Records)
	defer bar.finish()
	for batchNo := st.Summary.Batches; ; batchNo++ {
		body, n, lines, consumed, err := readBatch(br, header, format, cfg.BatchRecords)
		if err != nil {
			return st.Summary, err
		}
		if n == 0 {
			break
		}
		res, err := send(ctx, cfg, body, format, id+"-"+strconv.FormatInt(st.Offset, 10))
		if err != nil {
			return st.Summary, err
		}
		st.Summary.absorb(res, file, line, n)
		st.Offset += consumed
		line += lines
		st.Line = line
		st.Summary.Batches++
		if err := st.save(statePath); err != nil {
			return st.Summary, fmt.Errorf("saving resume state: %w", err)
		}
		bar.update(rawRead, st.Summary.Records)
		if cfg.AfterBatch != nil {
			if err := cfg.AfterBatch(file, batchNo); err != nil {
				return st.Summary, err
			}
		}
	}
	st.Done = true
	return st.Summary, st.save(statePath)
}

// readBatch reads up to max records (lines; a CSV record may span lines
// inside quotes) and returns the body to send, the records, the lines and
// the bytes consumed.
func readBatch(br *bufio.Reader, header []byte, format string, max int) (body []byte, n, lines int, consumed int64, err error) {
	var buf bytes.Buffer
	buf.Write(header)
	for n < max {
		var rec []byte
		for {
			part, err := br.ReadBytes('\n')
			if len(part) > 0 {
				rec = append(rec, part...)
				consumed += int64(len(part))
				lines++
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, 0, 0, 0, err
			}
			// a CSV record goes on while a quote is open
			if format != "csv" || bytes.Count(rec, []byte{'"'})%2 == 0 {
				break
			}
		}
		if len(rec) == 0 {
			break
		}
		if len(bytes.TrimSpace(rec)) == 0 {
			continue
		}
		if rec[len(rec)-1] != '\n' {
			rec = append(rec, '\n')
		}
		buf.Write(rec)
		n++
	}
	return buf.Bytes(), n, lines, consumed, nil
}

// answer is the API's answer to a batch (200 or 422).
type answer struct {
	Received int `json:"received"`
	Stored   int `json:"stored"` // written to the log by this request
	Rejected []struct {
		Line     int    `json:"line"`
		RecordID string `json:"record_id"`
		Field    string `json:"field"`
		Reason   string `json:"reason"`
	} `json:"rejected"`
	Projected *struct {
		Accepted      int `json:"accepted"`
		Late          int `json:"late"`
		Duplicate     int `json:"duplicate"`
		Conflict      int `json:"conflict"`
		UnknownCard   int `json:"unknown_card"`
		TooLate       int `json:"too_late"`
		CardCancelled int `json:"card_cancelled"`
	} `json:"projected"`
}

// absorb adds a batch's answer; firstLine is the file line of its first record.
func (s *Summary) absorb(a *answer, file string, firstLine, n int) {
	s.Records += n
	s.Rejected += len(a.Rejected)
	if p := a.Projected; p != nil {
		s.Accepted += p.Accepted + p.Late
		s.Late += p.Late
		s.Duplicates += p.Duplicate
		s.Conflicts += p.Conflict
		for reason, k := range map[string]int{"unknown_card": p.UnknownCard, "too_late": p.TooLate, "card_cancelled": p.CardCancelled} {
			if k > 0 {
				s.Rejected += k
				s.countReason("projector: "+reason, k)
			}
		}
	} else {
		s.Pending += a.Stored // stored; the projector had not decided them yet
	}
	for _, r := range a.Rejected {
		s.countReason(r.Field+": "+r.Reason, 1)
		if len(s.Examples) < maxExamples {
			// line 1 of a CSV batch is the header; the file line follows
			s.Examples = append(s.Examples, Rejected{File: file, Line: firstLine + r.Line - 1 - headerLines(file), RecordID: r.RecordID, Field: r.Field, Reason: r.Reason})
		}
	}
}

func headerLines(file string) int {
	if strings.HasSuffix(strings.TrimSuffix(strings.ToLower(file), ".gz"), ".csv") {
		return 1
	}
	return 0
}

func (s *Summary) countReason(k string, n int) {
	if s.Reasons == nil {
		s.Reasons = map[string]int{}
	}
	s.Reasons[k] += n
}

// errRetry marks an answer worth trying again, with the server's wish.
type errRetry struct {
	status int
	after  time.Duration
	body   string
}

func (e *errRetry) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

// send posts one batch, retrying network errors, 429 and 5xx (but 500)
// with exponential backoff, honouring Retry-After. The idempotency key
// makes every retry the same batch.
func send(ctx context.Context, cfg *Config, body []byte, format, key string) (*answer, error) {
	ctype := map[string]string{"csv": "text/csv", "ndjson": "application/x-ndjson"}[format]
	u := strings.TrimSuffix(cfg.URL, "/") + "/v1/usage"
	q := []string{}
	if cfg.Carrier != "" {
		q = append(q, "carrier="+cfg.Carrier)
	}
	if cfg.Wait {
		q = append(q, "wait=true")
	} else {
		q = append(q, "wait=false") // the summary counts the records as pending
	}
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(body)
	_ = zw.Close()
	var a *answer
	bo := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxElapsedTime(cfg.MaxElapsed)), ctx)
	op := func() error {
		req, err := http.NewRequestWithContext(ctx, "POST", u, bytes.NewReader(gz.Bytes()))
		if err != nil {
			return backoff.Permanent(err)
		}
		req.Header.Set("Content-Type", ctype)
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Idempotency-Key", key)
		if cfg.Token != "" {
			req.Header.Set("Authorization", "Bearer "+cfg.Token)
		}
		resp, err := cfg.Client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return backoff.Permanent(ctx.Err())
			}
			return err // network: retry
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		switch {
		case resp.StatusCode == 200 || resp.StatusCode == 422:
			a = &answer{}
			if err := json.Unmarshal(b, a); err != nil {
				return backoff.Permanent(fmt.Errorf("unreadable answer: %w", err))
			}
			return nil
		case resp.StatusCode == 429 || resp.StatusCode == 502 || resp.StatusCode == 503 || resp.StatusCode == 504:
			after, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			return &errRetry{status: resp.StatusCode, after: time.Duration(after) * time.Second, body: strings.TrimSpace(string(b))}
		}
		return backoff.Permanent(fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b))))
	}
	notify := func(err error, d time.Duration) {
		var r *errRetry
		if errors.As(err, &r) && r.after > d {
			time.Sleep(r.after - d) // the server asked for at least this long
		}
		fmt.Fprintf(progressOut(cfg), "\nretrying in %s: %v\n", d.Round(time.Millisecond), err)
	}
	if err := backoff.RetryNotify(op, bo, notify); err != nil {
		return nil, err
	}
	return a, nil
}

func progressOut(cfg *Config) io.Writer {
	if cfg.Progress == nil {
		return io.Discard
	}
	return cfg.Progress
}

// Print writes a summary for people.
func (s *Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "\n%d file(s), %d batch(es), %d record(s):\n", s.Files, s.Batches, s.Records)
	fmt.Fprintf(w, "  accepted    %d", s.Accepted)
	if s.Late > 0 {
		fmt.Fprintf(w, " (%d late, counted in their closed cycle)", s.Late)
	}
	fmt.Fprintf(w, "\n  duplicates  %d (counted once already)\n", s.Duplicates)
	if s.Pending > 0 {
		fmt.Fprintf(w, "  pending     %d (stored; the projector had not decided them when answered: see the cards)\n", s.Pending)
	}
	if s.Conflicts > 0 {
		fmt.Fprintf(w, "  conflicts   %d (same record id, other content: not counted; see usage.conflict events)\n", s.Conflicts)
	}
	fmt.Fprintf(w, "  rejected    %d\n", s.Rejected)
	keys := make([]string, 0, len(s.Reasons))
	for k := range s.Reasons {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return s.Reasons[keys[i]] > s.Reasons[keys[j]] || (s.Reasons[keys[i]] == s.Reasons[keys[j]] && keys[i] < keys[j])
	})
	for _, k := range keys {
		fmt.Fprintf(w, "    %6d  %s\n", s.Reasons[k], k)
	}
	for _, e := range s.Examples {
		fmt.Fprintf(w, "    %s:%d record %q: %s: %s\n", e.File, e.Line, e.RecordID, e.Field, e.Reason)
	}
	if s.Rejected > 0 {
		fmt.Fprintln(w, "  rejected records are kept: `cardmeter rejections list`, then `cardmeter rejections resubmit` once the cause is fixed")
	}
}
