package app

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

const (
	tokCMCC    = "test-usage-cmcc-0123456789"
	tokCUCC    = "test-usage-cucc-0123456789"
	tokBilling = "test-billing-0123456789"
	tokRead    = "test-read-0123456789"
	tokAdmin   = "test-admin-0123456789"
)

var testTokens = strings.Join([]string{
	"cmcc " + tokCMCC + " usage:cmcc", "cucc " + tokCUCC + " usage:cucc", "billing " + tokBilling + " billing,read",
	"dash " + tokRead + " read", "admin " + tokAdmin + " admin"}, ";")

// securedPipeline runs the API (with tokens and small limits), projector
// and manual clock at 2026-03-10 12:00 UTC, with a plan and two cards.
func securedPipeline(t *testing.T, mut func(*Config)) (*Pipeline, *authClient) {
	cfg := Config{Roles: []string{RoleAPI, RoleProjector, RoleClock}, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC), Tokens: testTokens,
		API: api.Config{Batch: api.BatchLimits{MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxRecords: 1000, MaxLineBytes: 1024}}}
	if mut != nil {
		mut(&cfg)
	}
	p, err := Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 10*time.Second, p.Projector.Ready)
	c := &authClient{t: t, base: p.URL}
	c.must(c.send("PUT", "/v1/plans/p", tokBilling, "application/json", `{"quota_bytes": 1000000}`), 200)
	c.must(c.send("PUT", "/v1/cards/"+iccid(1), tokBilling, "application/json", `{"account_id":"a","plan_id":"p","carrier":"cmcc","imsi":"460001000000001"}`), 200)
	c.must(c.send("PUT", "/v1/cards/"+iccid(2), tokBilling, "application/json", `{"account_id":"b","plan_id":"p","carrier":"cucc"}`), 200)
	return p, c
}

type authClient struct {
	t    *testing.T
	base string
}

type response struct {
	code   int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (c *authClient) sendReq(req *http.Request) response {
	c.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	return response{resp.StatusCode, resp.Header, body, raw}
}

func (c *authClient) send(method, path, token, ctype, body string) response {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	return c.sendReq(req)
}

// postKeyed posts a CSV usage batch with an Idempotency-Key.
func (c *authClient) postKeyed(token, body, key string) response {
	c.t.Helper()
	req, _ := http.NewRequest("POST", c.base+"/v1/usage", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "text/csv")
	req.Header.Set("Idempotency-Key", key)
	return c.sendReq(req)
}

// dialAPI opens a raw connection to the API, for clients that misbehave
// below HTTP; it is closed when the test ends.
func dialAPI(t *testing.T, p *Pipeline) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (c *authClient) must(r response, code int) response {
	c.t.Helper()
	if r.code != code {
		c.t.Fatalf("status %d, want %d: %s", r.code, code, r.raw)
	}
	return r
}

func csvOf(rows ...string) string {
	return "record_id,iccid,imsi,start_time,end_time,bytes_up,bytes_down\n" + strings.Join(rows, "\n") + "\n"
}

func row(id, iccid, imsi string, bytes int) string {
	return fmt.Sprintf("%s,%s,%s,2026-03-10T10:00:00Z,2026-03-10T10:30:00Z,0,%d", id, iccid, imsi, bytes)
}

// Tokens: a carrier's token pushes only that carrier's records; scopes
// separate billing, operators and readers; the answers say which.
func TestTokensAndScopes(t *testing.T) {
	_, c := securedPipeline(t, nil)
	body := csvOf(row("r1", iccid(1), "", 10))
	cases := []struct {
		name, method, path, token, ctype, body string
		code                                   int
		typ                                    string
	}{
		{"no token", "POST", "/v1/usage", "", "text/csv", body, 401, "cardmeter:auth/missing-token"},
		{"unknown token", "POST", "/v1/usage", "nope-nope-nope-nope-nope", "text/csv", body, 401, "cardmeter:auth/invalid-token"},
		{"billing token pushes usage", "POST", "/v1/usage", tokBilling, "text/csv", body, 403, "cardmeter:auth/forbidden"},
		{"another carrier's name", "POST", "/v1/usage?carrier=cucc", tokCMCC, "text/csv", body, 403, "cardmeter:auth/forbidden-carrier"},
		{"read token writes a plan", "PUT", "/v1/plans/x", tokRead, "application/json", `{"quota_bytes":1}`, 403, "cardmeter:auth/forbidden"},
		{"usage token reads a card", "GET", "/v1/cards/" + iccid(1), tokCMCC, "", "", 403, "cardmeter:auth/forbidden"},
		{"read token reads a card", "GET", "/v1/cards/" + iccid(1), tokRead, "", "", 200, ""},
		{"carrier's own push", "POST", "/v1/usage", tokCMCC, "text/csv", body, 200, ""},
		{"health needs no token", "GET", "/healthz", "", "", "", 200, ""},
		{"clock needs admin", "PUT", "/v1/clock", tokBilling, "application/json", `{"now":"2026-03-10T12:00:00Z"}`, 403, "cardmeter:auth/forbidden"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.send(tc.method, tc.path, tc.token, tc.ctype, tc.body)
			if r.code != tc.code || (tc.typ != "" && r.body["type"] != tc.typ) {
				t.Fatalf("%d %s, want %d %s", r.code, r.raw, tc.code, tc.typ)
			}
			if r.code == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	// the carrier comes from the token, and a card of another carrier is
	// still counted under the pushing carrier's record ids
	r := c.must(c.send("POST", "/v1/usage", tokCUCC, "text/csv", csvOf(row("r1", iccid(2), "", 10))), 200)
	if r.body["carrier"] != "cucc" {
		t.Fatalf("carrier %v", r.body["carrier"])
	}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	_, _ = w.Write(b)
	_ = w.Close()
	return buf.Bytes()
}

// Every limit refuses with its own problem type, and nothing is stored.
func TestBatchLimits(t *testing.T) {
	_, c := securedPipeline(t, nil)
	post := func(body []byte, gzipped bool) response {
		req, _ := http.NewRequest("POST", c.base+"/v1/usage", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokCMCC)
		req.Header.Set("Content-Type", "text/csv")
		if gzipped {
			req.Header.Set("Content-Encoding", "gzip")
		}
		return c.sendReq(req)
	}
	// a gzip bomb: a header and 64 MiB of blank lines, in well under the
	// 1 MiB body limit; refused at the 4 MiB decompressed limit
	bomb := gz(append([]byte(csvOf(row("x", iccid(1), "", 1))), bytes.Repeat([]byte{'\n'}, 64<<20)...))
	if len(bomb) > 1<<20 {
		t.Fatalf("the bomb is %d bytes: not a bomb", len(bomb))
	}
	r := post(bomb, true)
	if r.code != 413 || r.body["type"] != "cardmeter:limit/decompressed-size" {
		t.Fatalf("gzip bomb: %d %s", r.code, r.raw)
	}
	if r := post(bytes.Repeat([]byte("x"), 2<<20), false); r.code != 413 || r.body["type"] != "cardmeter:limit/body-size" {
		t.Fatalf("oversized body: %d %s", r.code, r.raw)
	}
	var rows []string
	for i := 0; i < 1001; i++ {
		rows = append(rows, row(fmt.Sprint("m", i), iccid(1), "", 1))
	}
	if r := post([]byte(csvOf(rows...)), false); r.code != 413 || r.body["type"] != "cardmeter:limit/records" {
		t.Fatalf("too many records: %d %s", r.code, r.raw)
	}
	long := csvOf(row("l1", iccid(1), "", 1), row(strings.Repeat("z", 2000), iccid(1), "", 1))
	if r := post([]byte(long), false); r.code != 400 || r.body["type"] != "cardmeter:limit/line-length" {
		t.Fatalf("long line: %d %s", r.code, r.raw)
	}
	// a good gzip batch goes through, and none of the refused ones counted
	r = post(gz([]byte(csvOf(row("g1", iccid(1), "", 7)))), true)
	if r.code != 200 || r.body["accepted"].(float64) != 1 {
		t.Fatalf("gzip batch: %d %s", r.code, r.raw)
	}
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(1), r.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 7 {
		t.Fatalf("usage %v: refused batches counted", u)
	}
}

// JSON arrays and NDJSON carry the same records as CSV; IMSI maps to the card.
func TestFormats(t *testing.T) {
	_, c := securedPipeline(t, nil)
	arr := `[{"record_id":"j1","imsi":"460001000000001","start_time":"2026-03-10T10:00:00Z","end_time":"2026-03-10T10:30:00Z","bytes_up":1,"bytes_down":2,"rat":"NB-IoT","apn":"cmiot","imei":"356938035643809","cell_id":"4600-1"}]`
	r := c.must(c.send("POST", "/v1/usage?wait=true", tokCMCC, "application/json", arr), 200)
	proj := r.body["projected"].(map[string]any)
	if r.body["accepted"].(float64) != 1 || proj["accepted"].(float64) != 1 {
		t.Fatalf("json array: %s", r.raw)
	}
	nd := `{"record_id":"n1","iccid":"` + iccid(1) + `","start_time":"2026-03-10T10:00:00Z","end_time":"2026-03-10T10:30:00Z","bytes_up":1,"bytes_down":2,"sequence":1,"session_id":"s"}`
	c.must(c.send("POST", "/v1/usage", tokCMCC, "application/x-ndjson", nd), 200)
	if r := c.send("POST", "/v1/usage", tokCMCC, "text/plain", "x"); r.code != 415 {
		t.Fatalf("text/plain: %d", r.code)
	}
}

// Bad records are named by line, field and reason; the good ones beside
// them are stored; the rejected are kept, listed, and re-submitted once
// their cause is fixed; a record id counts once however often it comes.
func TestRejectionsResubmitAndDuplicates(t *testing.T) {
	_, c := securedPipeline(t, nil)
	unknown := iccid(77)
	body := csvOf(
		row("ok1", iccid(1), "", 100),
		row("bad-time", iccid(1), "", 1)[:0]+"bad-time,"+iccid(1)+",,yesterday,2026-03-10T10:30:00Z,0,1",
		row("later", unknown, "", 50),
		row("future", iccid(1), "", 1)[:0]+"future,"+iccid(1)+",,2026-03-10T10:00:00Z,2026-03-11T10:30:00Z,0,1",
	)
	r := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", body), 422)
	errs := r.body["errors"].([]any)
	if r.body["accepted"].(float64) != 1 || len(errs) != 3 {
		t.Fatalf("mixed batch: %s", r.raw)
	}
	want := map[string][2]any{"bad-time": {"start_time", 3.0}, "later": {"iccid", 4.0}, "future": {"end_time", 5.0}}
	for _, e := range errs {
		e := e.(map[string]any)
		w := want[e["record_id"].(string)]
		if e["field"] != w[0] || e["line"] != w[1] || e["reason"] == "" {
			t.Errorf("rejection %v, want field %v line %v", e, w[0], w[1])
		}
	}
	// kept for audit: listed with reasons
	l := c.must(c.send("GET", "/v1/rejections?carrier=cmcc", tokRead, "", ""), 200)
	list := l.body["rejections"].([]any)
	if len(list) != 3 {
		t.Fatalf("rejections: %s", l.raw)
	}
	var laterID string
	for _, x := range list {
		x := x.(map[string]any)
		if x["error"].(map[string]any)["record_id"] == "later" {
			laterID = x["id"].(string)
		}
	}
	// still unknown: re-submitting changes nothing
	rs := c.must(c.send("POST", "/v1/rejections/resubmit", tokCMCC, "application/json", `{"ids":["`+laterID+`"]}`), 200)
	if rs.body["accepted"].(float64) != 0 || len(rs.body["still_rejected"].([]any)) != 1 {
		t.Fatalf("resubmit before the fix: %s", rs.raw)
	}
	// another carrier cannot re-submit cmcc's rejections
	rs = c.must(c.send("POST", "/v1/rejections/resubmit", tokCUCC, "application/json", `{"ids":["`+laterID+`"]}`), 200)
	if rs.body["accepted"].(float64) != 0 || len(rs.body["not_resubmittable"].([]any)) != 1 {
		t.Fatalf("cross-carrier resubmit: %s", rs.raw)
	}
	// the card is provisioned: re-submission counts the record
	c.must(c.send("PUT", "/v1/cards/"+unknown, tokBilling, "application/json", `{"account_id":"a","plan_id":"p","carrier":"cmcc"}`), 200)
	rs = c.must(c.send("POST", "/v1/rejections/resubmit", tokCMCC, "application/json", `{"ids":["`+laterID+`"]}`), 200)
	if rs.body["accepted"].(float64) != 1 {
		t.Fatalf("resubmit after the fix: %s", rs.raw)
	}
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", unknown, rs.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 50 {
		t.Fatalf("re-submitted usage %v", u)
	}
	pending := c.must(c.send("GET", "/v1/rejections?carrier=cmcc&pending=true", tokRead, "", ""), 200)
	if n := len(pending.body["rejections"].([]any)); n != 2 {
		t.Fatalf("%d pending rejections after the resubmission, want 2", n)
	}
	// the same record ids in a new batch (another key): the projector counts them once
	again := c.must(c.send("POST", "/v1/usage?wait=true", tokCMCC, "text/csv", csvOf(row("ok1", iccid(1), "", 100), row("ok2", iccid(1), "", 5))), 200)
	proj := again.body["projected"].(map[string]any)
	if proj["duplicate"].(float64) != 1 || proj["accepted"].(float64) != 1 {
		t.Fatalf("re-sent record: %s", again.raw)
	}
	card = c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(1), again.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 105 {
		t.Fatalf("usage %v, want 105: a re-sent record counted twice", u)
	}
	// an Idempotency-Key retry gets the first answer back
	req := func() response { return c.postKeyed(tokCMCC, csvOf(row("k1", iccid(1), "", 1)), "batch-42") }
	first, second := req(), req()
	if first.code != 200 || second.code != 200 || !bytes.Equal(first.raw, second.raw) || second.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("idempotent retry:\n%s\n%s", first.raw, second.raw)
	}
}

// A client that sends its headers slowly is cut off.
func TestSlowClientIsCut(t *testing.T) {
	p, _ := securedPipeline(t, func(c *Config) { c.ReadHeaderTimeout = 300 * time.Millisecond })
	conn := dialAPI(t, p)
	_, _ = conn.Write([]byte("POST /v1/usage HTTP/1.1\r\nHost: x\r\n"))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// the server answers 408 or closes; either way the read ends well
	// before the deadline instead of the connection being held open
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err == nil && !strings.Contains(line, "408") {
		t.Fatalf("slow client got %q", line)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server held the slow connection open")
	}
}

// Without tokens the API refuses to listen beyond loopback.
func TestOpenAPIOnlyOnLoopback(t *testing.T) {
	_, err := Start(context.Background(), Config{Roles: []string{RoleAPI}, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "0.0.0.0:0"}, testenv.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("open API on 0.0.0.0: %v", err)
	}
}

// When JetStream does not store a batch, ingest answers 503 with
// Retry-After rather than accept what it cannot keep.
func TestLogDownAnswers503(t *testing.T) {
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.Roles = []string{RoleAPI, RoleProjector, RoleClock}
		cfg.API.PublishTimeout = time.Second
	})
	p.embedded.Shutdown()
	p.embedded.WaitForShutdown()
	r := c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("d1", iccid(1), "", 1)))
	if r.code != 503 || r.header.Get("Retry-After") == "" || r.body["type"] != "cardmeter:unavailable/log" {
		t.Fatalf("with the log down: %d %s", r.code, r.raw)
	}
}

// BatchDefaults are the API's default batch limits (the secured pipeline
// of these tests uses small ones).
func BatchDefaults() api.BatchLimits { return api.DefaultBatchLimits }
