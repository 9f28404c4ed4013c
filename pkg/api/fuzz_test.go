package api

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/clock"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// fuzzServer is one API per fuzzing process, on a real embedded JetStream:
// a directory of 20 cards of carrier cmcc, small limits so that the
// fuzzer reaches them, and no projector (verdicts are pending).
func fuzzServer(tb testing.TB) *Server {
	{
		// a real JetStream, acknowledging before the disk has the writes
		nc, js := testenv.JetStreamNoSync(tb)
		ctx := context.Background()
		batches, err := js.KeyValue(ctx, broker.BucketBatches)
		if err != nil {
			tb.Fatal(err)
		}
		resolved, err := js.KeyValue(ctx, broker.BucketResolved)
		if err != nil {
			tb.Fatal(err)
		}
		clk := clock.New(js, clock.Config{Partitions: broker.DefaultTopology.Partitions, Manual: true, Start: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC).Unix()}, testenv.Logger(tb))
		if err := clk.Start(ctx); err != nil {
			tb.Fatal(err)
		}
		dir, _ := newTestDirectory(20)
		return New(Config{Partitions: broker.DefaultTopology.Partitions, Batches: batches, Resolved: resolved, VerdictWait: time.Millisecond, ChunkRecords: 64,
			Batch: BatchLimits{MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxRecords: 2000, MaxLineBytes: 4096}},
			nc, js, dir, clk, prometheus.NewRegistry(), func() (Readiness, error) { return Readiness{}, nil }, testenv.Logger(tb))
	}
}

// FuzzUsageHandler drives POST /v1/usage end to end (body, content type,
// encoding, query, Idempotency-Key) and holds every answer to the
// contract: never a 5xx but a 503 with Retry-After, always a JSON answer
// of the declared type, a problem typed "cardmeter:...", a batch answer
// whose counts add up and whose rejections each name their record, and
// the same answer again for the same request.
func FuzzUsageHandler(f *testing.F) {
	head := "record_id,iccid,imsi,start_time,end_time,bytes_up,bytes_down\n"
	good := "r1,89860000000000000001,,2026-03-10T10:00:00Z,2026-03-10T10:30:00Z,1,2\n"
	f.Add("text/csv", "", "carrier=cmcc", false, []byte(head+good), "")
	f.Add("text/csv", "", "carrier=cmcc", true, []byte(head+good+"r2,89860000000000099999,,x,y,-1,2\n"), "k1")
	f.Add("application/x-ndjson", "", "carrier=cmcc&wait=false", false,
		[]byte(`{"record_id":"n1","iccid":"89860000000000000002","start_time":"2026-03-10T10:00:00Z","end_time":"2026-03-10T10:30:00Z","bytes_up":1,"bytes_down":2}`+"\n"), "")
	f.Add("application/json", "", "carrier=cmcc", false,
		[]byte(`[{"record_id":"j1","imsi":"460000000000003","start_time":"2026-03-10T10:00:00Z","end_time":"2026-03-10T10:30:00Z","bytes_up":"1","bytes_down":2}]`), "")
	f.Add("text/csv; charset=utf-8", "gzip", "carrier=cmcc", false, []byte("\x1f\x8b\x08\x00"), "")
	f.Add("application/json", "deflate", "", false, []byte("[]"), "")
	f.Add("text/csv", "", "carrier=cmcc", false, []byte(head+"r\xff,89860000000000000001,,2026-03-10T10:00:00Z,2026-03-10T10:30:00Z,1,2\n"), "")
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, ctype, encoding, query string, gz bool, body []byte, key string) {
		if gz {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(body)
			zw.Close()
			body, encoding = b.Bytes(), "gzip"
		}
		if _, err := url.ParseRequestURI("/v1/usage?" + query); err != nil || strings.ContainsAny(query, "# \t\r\n") {
			return // not a request line a client can send
		}
		if _, err := url.ParseQuery(query); err != nil {
			return
		}
		send := func() *httptest.ResponseRecorder {
			req := httptest.NewRequest("POST", "/v1/usage?"+query, bytes.NewReader(body))
			req.Header.Set("Content-Type", ctype)
			if encoding != "" {
				req.Header.Set("Content-Encoding", encoding)
			}
			if key != "" {
				req.Header.Set("Idempotency-Key", key)
			}
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			return rec
		}
		rec := send()
		checkUsageAnswer(t, rec)
		again := send()
		checkUsageAnswer(t, again)
		if again.Code != rec.Code {
			t.Fatalf("the same request answered %d, then %d: %s / %s", rec.Code, again.Code, rec.Body, again.Body)
		}
	})
}

func checkUsageAnswer(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	var a struct {
		Type          string            `json:"type"`
		Status        int               `json:"status"`
		Received      *int              `json:"received"`
		Stored        *int              `json:"stored"`
		RejectedCount int               `json:"rejected_count"`
		Rejected      []json.RawMessage `json:"rejected"`
		Errors        []struct {
			Index  int    `json:"index"`
			Reason string `json:"reason"`
		} `json:"errors"`
		Verdicts string `json:"verdicts"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("%d with a body that is not JSON (%v): %q", rec.Code, err, rec.Body)
	}
	ctype := rec.Header().Get("Content-Type")
	switch code := rec.Code; {
	case code == http.StatusOK:
		if ctype != "application/json" || a.Received == nil || a.Stored == nil || *a.Stored != *a.Received || a.RejectedCount != 0 || a.Verdicts == "" {
			t.Fatalf("200 answer: %s", rec.Body)
		}
	case code == http.StatusServiceUnavailable:
		if rec.Header().Get("Retry-After") == "" {
			t.Fatalf("503 without Retry-After: %s", rec.Body)
		}
	case code >= 500:
		t.Fatalf("%d: %s", code, rec.Body)
	case code >= 400:
		if ctype != "application/problem+json" || !strings.HasPrefix(a.Type, "cardmeter:") || a.Status != code {
			t.Fatalf("%d problem: %s %s", code, ctype, rec.Body)
		}
		if code == http.StatusUnprocessableEntity && a.Received != nil && a.Stored != nil {
			if a.RejectedCount == 0 || *a.Stored+a.RejectedCount != *a.Received || len(a.Errors) != min(a.RejectedCount, maxAnswerRejections) {
				t.Fatalf("422 counts do not add up: %s", rec.Body)
			}
			for _, e := range a.Errors {
				if e.Reason == "" || e.Index < 0 || e.Index >= *a.Received {
					t.Fatalf("a rejection that names no record or reason: %s", rec.Body)
				}
			}
		}
	default:
		t.Fatalf("unexpected status %d: %s", code, rec.Body)
	}
}
