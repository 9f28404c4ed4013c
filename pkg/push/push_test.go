package push

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A stand-in for the API that fails the first attempts of each batch with
// 503 (and once with a dropped connection), then answers; it records the
// idempotency keys it saw.
type flaky struct {
	mu       sync.Mutex
	attempts map[string]int
	records  int
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	f.mu.Lock()
	f.attempts[key]++
	n := f.attempts[key]
	f.mu.Unlock()
	switch n {
	case 1:
		w.Header().Set("Retry-After", "0")
		http.Error(w, `{"type":"cardmeter:unavailable/log"}`, http.StatusServiceUnavailable)
		return
	case 2:
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
		return
	}
	body, _ := io.ReadAll(r.Body)
	if r.Header.Get("Content-Encoding") != "gzip" || r.Header.Get("Content-Type") != "text/csv" || r.Header.Get("Authorization") != "Bearer tok" {
		http.Error(w, "bad request headers", 400)
		return
	}
	_ = body
	f.mu.Lock()
	f.records += 2
	f.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]any{"received": 2, "stored": 2, "verdicts": "pending"})
}

// Network errors and 503s are retried with backoff, with the same
// idempotency key each time, until the batch is answered.
func TestRetriesWithTheSameKey(t *testing.T) {
	f := &flaky{attempts: map[string]int{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "u.csv")
	rows := "record_id,iccid,start_time,end_time,bytes_up,bytes_down\n" + strings.Repeat("r,8986,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z,1,1\n", 6)
	if err := os.WriteFile(file, []byte(rows), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := Run(context.Background(), Config{URL: srv.URL, Token: "tok", BatchRecords: 2, MaxElapsed: 30 * time.Second}, []string{file})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Batches != 3 || sum.Pending != 6 || sum.Accepted != 0 || f.records != 6 {
		t.Fatalf("summary %+v, server counted %d", sum, f.records)
	}
	if len(f.attempts) != 3 {
		t.Fatalf("keys %v: a retry changed its key", f.attempts)
	}
	for k, n := range f.attempts {
		if n != 3 {
			t.Fatalf("key %s tried %d times, want 3", k, n)
		}
	}
}

// A 4xx other than 429 is not retried: the batch is wrong, not the moment.
func TestClientErrorsAreNotRetried(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		http.Error(w, `{"type":"cardmeter:limit/records"}`, http.StatusRequestEntityTooLarge)
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "u.ndjson")
	_ = os.WriteFile(file, []byte(`{"record_id":"r"}`+"\n"), 0o644)
	_, err := Run(context.Background(), Config{URL: srv.URL}, []string{file})
	if err == nil || !strings.Contains(err.Error(), "413") || calls != 1 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}

// A CSV record may span lines inside quotes; a batch never splits it.
func TestReadBatchKeepsQuotedNewlines(t *testing.T) {
	in := "a,\"x\ny\",1\nb,2,3\nc,3,4\n"
	br := newReader(in)
	body, n, lines, consumed, err := readBatch(br, []byte("h\n"), "csv", 2)
	if err != nil || n != 2 || lines != 3 || string(body) != "h\na,\"x\ny\",1\nb,2,3\n" || consumed != int64(len("a,\"x\ny\",1\nb,2,3\n")) {
		t.Fatalf("batch %q n=%d lines=%d consumed=%d err=%v", body, n, lines, consumed, err)
	}
}

func newReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
