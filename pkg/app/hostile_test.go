package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// Answers to careless and hostile clients (issue 11): each test failed on
// the code before the fix.

// A batch with more rejected records than fit one log message is stored
// and answered (the rejections go in several messages), and its retry gets
// the same answer: before, it answered 503 on every retry while its valid
// records were counted.
func TestManyRejectionsInOneBatch(t *testing.T) {
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.API.Batch = api.BatchLimits{MaxBodyBytes: 16 << 20, MaxDecompressedBytes: 16 << 20, MaxRecords: 100000, MaxLineBytes: 1024}
	})
	var rows []string
	for i := 0; i < 1000; i++ {
		rows = append(rows, row(fmt.Sprint("v", i), iccid(1), "", 1))
	}
	const unknown = 60000 // ~15 MB of rejections: more than one 8 MB message
	for i := 0; i < unknown; i++ {
		rows = append(rows, row(fmt.Sprint("u", i), iccid(100+i%500), "", 1))
	}
	body := csvOf(rows...)
	first := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", body), 422)
	if first.body["accepted"].(float64) != 1000 || first.body["rejected_count"].(float64) != unknown ||
		len(first.body["errors"].([]any)) != 1000 || first.body["rejected_truncated"] != true {
		t.Fatalf("accepted %v, rejected %v, %d errors listed", first.body["accepted"], first.body["rejected_count"], len(first.body["errors"].([]any)))
	}
	again := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", body), 422)
	if again.header.Get("Idempotent-Replayed") != "true" || again.body["accepted"].(float64) != 1000 {
		t.Fatalf("retry: replayed %q, accepted %v", again.header.Get("Idempotent-Replayed"), again.body["accepted"])
	}
	// every rejection is kept for audit, over several messages, once
	l := c.must(c.send("GET", "/v1/rejections?carrier=cmcc&limit=10000&batch_id="+first.body["batch_id"].(string), tokRead, "", ""), 200)
	if n := len(l.body["rejections"].([]any)); n != 10000 {
		t.Fatalf("%d rejections listed", n)
	}
	st, err := p.JS.Stream(context.Background(), broker.StreamRejected)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) > int(p.NC.MaxPayload()) {
			t.Fatalf("message %d of %d bytes", seq, len(m.Data))
		}
		var rb api.RejectedBatch
		if err := json.Unmarshal(m.Data, &rb); err != nil {
			t.Fatal(err)
		}
		held += len(rb.Rejections)
	}
	if info.State.Msgs < 2 || held != unknown {
		t.Fatalf("%d rejections kept in %d messages, want %d in several", held, info.State.Msgs, unknown)
	}
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(1), first.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 1000 {
		t.Fatalf("usage %v, want 1000", u)
	}
}

// An Idempotency-Key reused with another body is refused (422, typed),
// and the second body is not silently dropped as a duplicate: before, it
// answered 200 with the first answer.
func TestIdempotencyKeyReusedWithAnotherBody(t *testing.T) {
	_, c := securedPipeline(t, nil)
	post := func(body string) response { return c.postKeyed(tokCMCC, body, "batch-7") }
	first := c.must(post(csvOf(row("a1", iccid(1), "", 10))), 200)
	if r := post(csvOf(row("a1", iccid(1), "", 10))); r.code != 200 || r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("same body again: %d %s", r.code, r.raw)
	}
	r := post(csvOf(row("b1", iccid(1), "", 99)))
	if r.code != 422 || r.body["type"] != "cardmeter:invalid/idempotency-key-reused" {
		t.Fatalf("another body under the key: %d %s", r.code, r.raw)
	}
	// the refused body counted nothing; a new key stores it
	third := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("c1", iccid(1), "", 1))), 200)
	if third.body["position"].(float64) <= first.body["position"].(float64) {
		t.Fatalf("positions %v then %v", first.body["position"], third.body["position"])
	}
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(1), third.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 11 {
		t.Fatalf("usage %v, want 11", u)
	}
}

// Smaller defects: the Bearer scheme is case-insensitive; rows rejected
// while parsing count towards the records limit.
func TestBearerSchemeAndRecordLimit(t *testing.T) {
	_, c := securedPipeline(t, nil)
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		req, _ := http.NewRequest("GET", c.base+"/v1/cards/"+iccid(1), nil)
		req.Header.Set("Authorization", scheme+" "+tokRead)
		if r := c.sendReq(req); r.code != 200 {
			t.Errorf("scheme %q: %d %s", scheme, r.code, r.raw)
		}
	}
	var rows []string
	for i := 0; i < 1001; i++ {
		rows = append(rows, fmt.Sprintf("m%d,%s,,not-a-time,2026-03-10T10:30:00Z,0,1", i, iccid(1)))
	}
	if r := c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(rows...)); r.code != 413 || r.body["type"] != "cardmeter:limit/records" {
		t.Fatalf("1,001 malformed rows against a limit of 1,000: %d %s", r.code, r.raw)
	}
}

// A body that trickles in past the read timeout is the client's fault:
// 408, not 500.
func TestSlowBodyIs408(t *testing.T) {
	p, _ := securedPipeline(t, func(c *Config) { c.ReadTimeout = 700 * time.Millisecond })
	conn := dialAPI(t, p)
	head := "POST /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokCMCC + "\r\nContent-Type: text/csv\r\nContent-Length: 1000\r\n\r\nrecord_id,"
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	if got := string(buf[:n]); !strings.HasPrefix(got, "HTTP/1.1 408") || !strings.Contains(got, "cardmeter:client/timeout") {
		t.Fatalf("slow body answered %q", got)
	}
}

// A carrier counts usage only on its own cards: a usage:cmcc token's
// record for a cucc card is rejected (kept, reason named) and counts
// nothing. In the open API (no tokens) a batch and a card name their
// carrier, rather than falling to a made-up "default".
func TestCarrierLanes(t *testing.T) {
	_, c := securedPipeline(t, nil)
	r := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("x1", iccid(2), "", 500), row("x2", iccid(1), "", 5))), 422)
	errs := r.body["errors"].([]any)
	if r.body["accepted"].(float64) != 1 || len(errs) != 1 {
		t.Fatalf("a cmcc batch with a cucc card's record: %s", r.raw)
	}
	if e := errs[0].(map[string]any); e["record_id"] != "x1" || e["field"] != "iccid" || !strings.Contains(e["reason"].(string), "not one of carrier cmcc's cards") {
		t.Fatalf("rejection %v", e)
	}
	own := c.must(c.send("POST", "/v1/usage", tokCUCC, "text/csv", csvOf(row("y1", iccid(2), "", 7))), 200)
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(2), own.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 7 {
		t.Fatalf("the cucc card's usage %v, want its own carrier's 7 only", u)
	}

	open, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector}, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0", Partitions: 1}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(open.Stop)
	testenv.Eventually(t, 20*time.Second, open.Projector.Ready) // a write's decision is final (200) once its partition folds
	o := &authClient{t: t, base: open.URL}
	o.must(o.send("PUT", "/v1/plans/p", "", "application/json", `{"quota_bytes": 1000}`), 200)
	if r := o.send("PUT", "/v1/cards/"+iccid(3), "", "application/json", `{"account_id":"a","plan_id":"p"}`); r.code != 400 || r.body["field"] != "carrier" {
		t.Fatalf("a card without a carrier: %d %s", r.code, r.raw)
	}
	for field, body := range map[string]string{
		"imsi":   `{"account_id":"a","plan_id":"p","carrier":"cmcc","imsi":"46000-123456789"}`,
		"msisdn": `{"account_id":"a","plan_id":"p","carrier":"cmcc","msisdn":"+8613800138000"}`,
	} {
		if r := o.send("PUT", "/v1/cards/"+iccid(3), "", "application/json", body); r.code != 400 || r.body["field"] != field {
			t.Fatalf("a card with a malformed %s: %d %s", field, r.code, r.raw)
		}
	}
	o.must(o.send("PUT", "/v1/cards/"+iccid(3), "", "application/json", `{"account_id":"a","plan_id":"p","carrier":"cmcc"}`), 200)
	if r := o.send("POST", "/v1/usage", "", "text/csv", csvOf(row("z1", iccid(3), "", 1))); r.code != 400 || r.body["field"] != "carrier" {
		t.Fatalf("a batch without a carrier: %d %s", r.code, r.raw)
	}
	o.must(o.send("POST", "/v1/usage?carrier=cmcc", "", "text/csv", csvOf(row("z1", iccid(3), "", 1))), 200)
}

// A write answers with what the fold decided: a renewal that ends in the
// past and a card moved to another account are refused (409, the rule
// named), not answered 200 while the fold ignores them; an applied write
// says so.
func TestWritesAnswerTheFoldsDecision(t *testing.T) {
	_, c := securedPipeline(t, nil)
	r := c.send("POST", "/v1/cards/"+iccid(1)+"/renewals", tokBilling, "application/json", `{"renewal_id":"r1","valid_until":"2026-01-01T00:00:00Z"}`)
	if r.code != 409 || r.body["type"] != "cardmeter:refused/invalid" {
		t.Fatalf("a renewal ending in the past: %d %s", r.code, r.raw)
	}
	r = c.send("PUT", "/v1/cards/"+iccid(1), tokBilling, "application/json", `{"account_id":"other","plan_id":"p","carrier":"cmcc"}`)
	if r.code != 409 || r.body["type"] != "cardmeter:refused/account-change" {
		t.Fatalf("a card moved to another account: %d %s", r.code, r.raw)
	}
	// its records still reach it
	u := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("w1", iccid(1), "", 3))), 200)
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(1), u.body["position"].(float64)), tokRead, "", ""), 200)
	if card.body["account_id"] != "a" || card.body["cycle"].(map[string]any)["usage_bytes"].(float64) != 3 {
		t.Fatalf("after the refused move: %s", card.raw)
	}
	ok := c.must(c.send("POST", "/v1/accounts/a/payments", tokBilling, "application/json", `{"payment_id":"p1","amount_fen":100}`), 200)
	if ok.body["decision"] != "applied" {
		t.Fatalf("a payment: %s", ok.raw)
	}
}

// A usage answer waits (bounded) for the projector's verdicts by default
// and says what it knows: final counts, or "pending" and no counts that
// look final. Before, without ?wait=true a re-sent record answered
// "duplicates": 0.
func TestUsageAnswerSaysWhatItKnows(t *testing.T) {
	_, c := securedPipeline(t, nil)
	first := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("s1", iccid(1), "", 5))), 200)
	if first.body["verdicts"] != "final" || first.body["accepted"] != 1.0 || first.body["duplicates"] != 0.0 || first.body["stored"] != 1.0 {
		t.Fatalf("a new record: %s", first.raw)
	}
	again := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("s1", iccid(1), "", 5), row("s2", iccid(1), "", 5))), 200)
	if again.body["verdicts"] != "final" || again.body["accepted"] != 1.0 || again.body["duplicates"] != 1.0 || again.body["stored"] != 2.0 {
		t.Fatalf("a re-sent record beside a new one: %s", again.raw)
	}
	opt := c.must(c.send("POST", "/v1/usage?wait=false", tokCMCC, "text/csv", csvOf(row("s3", iccid(1), "", 5))), 200)
	if _, has := opt.body["accepted"]; has || opt.body["verdicts"] != "pending" || opt.body["stored"] != 1.0 {
		t.Fatalf("?wait=false: %s", opt.raw)
	}

	// no projector running: the verdicts are pending, and the answer says so
	apiOnly, err := Start(context.Background(), Config{Roles: []string{RoleAPI}, DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0", Partitions: 1,
		API: api.Config{VerdictWait: 300 * time.Millisecond}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(apiOnly.Stop)
	o := &authClient{t: t, base: apiOnly.URL}
	o.must(o.send("PUT", "/v1/plans/p", "", "application/json", `{"quota_bytes": 1000}`), 200)
	if r := o.send("PUT", "/v1/cards/"+iccid(3), "", "application/json", `{"account_id":"a","plan_id":"p","carrier":"cmcc"}`); r.code != 202 || r.body["decision"] != "pending" {
		t.Fatalf("provisioning with no projector: %d %s", r.code, r.raw)
	}
	p := o.must(o.send("POST", "/v1/usage?carrier=cmcc", "", "text/csv", csvOf(row("q1", iccid(3), "", 1))), 200)
	if _, has := p.body["duplicates"]; has || p.body["verdicts"] != "pending" || p.body["stored"] != 1.0 {
		t.Fatalf("no projector: %s", p.raw)
	}
}

// A batch is published as it is read, so a fault of the batch as a whole
// can come after part of it is stored: the answer says how much (before,
// every chunk was held in memory until the end). The stored records count
// once when the batch, split, is sent again.
func TestBatchOverALimitSaysWhatItStored(t *testing.T) {
	_, c := securedPipeline(t, func(cfg *Config) { cfg.API.ChunkRecords = 100 })
	var rows []string
	for i := 0; i < 1001; i++ {
		rows = append(rows, row(fmt.Sprint("p", i), iccid(1), "", 1))
	}
	r := c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(rows...))
	if r.code != 413 || r.body["type"] != "cardmeter:limit/records" || r.body["stored"] != 1000.0 ||
		!strings.Contains(r.body["detail"].(string), "1000 records read before it are stored and count once if sent again") {
		t.Fatalf("1,001 records against a limit of 1,000, in chunks of 100: %d %s", r.code, r.raw)
	}
	// sent again in two halves: the first thousand count once
	a := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(rows[:500]...)), 200)
	b := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(rows[500:]...)), 200)
	if a.body["duplicates"] != 500.0 || b.body["duplicates"] != 500.0 || b.body["accepted"] != 1.0 {
		t.Fatalf("the halves: %s %s", a.raw, b.raw)
	}
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(1), b.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 1001 {
		t.Fatalf("usage %v, want 1001", u)
	}
}

// Batches in flight share one memory budget: a batch that finds it held
// by others is answered 503 with Retry-After (and gets through once they
// are done), rather than the process taking memory until it dies.
func TestBatchesInFlightShareAMemoryBudget(t *testing.T) {
	p, c := securedPipeline(t, func(cfg *Config) { cfg.API.Batch.InFlightBytes = 2 << 20 }) // bodies up to 1 MiB
	// two batches that declare 700 KB and send it slowly hold most of it
	var conns []net.Conn
	for i := 0; i < 2; i++ {
		conn := dialAPI(t, p)
		fmt.Fprintf(conn, "POST /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: text/csv\r\nContent-Length: 700000\r\n\r\nrecord_id,", tokCMCC)
		conns = append(conns, conn)
	}
	held := func() float64 {
		m := c.send("GET", "/metrics", "", "", "")
		for _, l := range strings.Split(string(m.raw), "\n") {
			if v, ok := strings.CutPrefix(l, "cardmeter_ingest_memory_bytes "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return -1
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if h := held(); h < 2*700000 {
			return fmt.Errorf("the slow batches hold %v bytes", h)
		}
		return nil
	})
	body := csvOf(row("m1", iccid(1), "", 1))
	r := c.send("POST", "/v1/usage", tokCMCC, "text/csv", body)
	if r.code != 503 || r.body["type"] != "cardmeter:unavailable/busy" || r.header.Get("Retry-After") == "" {
		t.Fatalf("with the budget held: %d %s", r.code, r.raw)
	}
	for _, conn := range conns {
		conn.Close()
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if r := c.send("POST", "/v1/usage", tokCMCC, "text/csv", body); r.code != 200 {
			return fmt.Errorf("after the others left: %d %s", r.code, r.raw)
		}
		return nil
	})
}

// Reads that wait for a position do not hold up the reads behind them:
// each query is answered on its own goroutine (before, a partition
// answered its queries one at a time, so a read waiting seconds for a
// batch's verdicts stalled every card read of the partition). With a
// backlog of 400,000 records to fold, twenty reads wait for its end while
// a plain read of the same partition answers at once.
func TestWaitingReadsDoNotStallOthers(t *testing.T) {
	p, c := securedPipeline(t, nil)
	part := broker.Partition("a", 2)
	start := time.Date(2026, 3, 10, 10, 0, 0, 0, time.UTC).Unix()
	recs := make([]cdr.Record, 4096)
	var futs []jetstream.PubAckFuture
	for n := 0; n < 100; n++ {
		for i := range recs {
			recs[i] = cdr.Record{RecordID: fmt.Sprintf("stall-%d-%d", n, i), ICCID: iccid(1), Start: start, End: start + 60, BytesDown: 1}
		}
		f, err := p.JS.PublishAsync(broker.UsageSubject(part), cdr.AppendChunk(nil, cdr.ChunkHeader{Carrier: "cmcc", BatchID: "stall", ReceivedAt: start}, recs))
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	var last uint64
	for _, f := range futs {
		select {
		case ack := <-f.Ok():
			last = max(last, ack.Sequence)
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	waited := make(chan time.Time, 20)
	for i := 0; i < 20; i++ {
		go func() {
			c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%d", iccid(1), last), tokRead, "", "")
			waited <- time.Now()
		}()
	}
	time.Sleep(50 * time.Millisecond) // the waiting reads are asked first
	r := c.must(c.send("GET", "/v1/cards/"+iccid(1), tokRead, "", ""), 200)
	plain := time.Now()
	first := <-waited
	if !plain.Before(first) {
		t.Fatalf("the plain read answered %s after the first waiting read (position %v of %d)", plain.Sub(first), r.body["position"], last)
	}
	if pos := r.body["position"].(float64); uint64(pos) >= last {
		t.Fatalf("the backlog was folded (position %v) before the plain read: nothing was waiting", pos)
	}
}

// A retried batch whose valid records differ from the first try's (a
// card provisioned in between) stores the record that is valid now: a
// chunk is named by the records it holds, not by its place in the batch.
// Before, the retry's first chunk took the first try's id and was dropped
// as a duplicate, with the newly valid record in it, while the answer
// said it was stored.
func TestRetryAfterACardIsProvisionedStoresItsRecord(t *testing.T) {
	_, c := securedPipeline(t, nil)
	body := csvOf(row("late-card", iccid(5), "", 7), row("k1", iccid(1), "", 1), row("k2", iccid(1), "", 1))
	first := c.send("POST", "/v1/usage?wait=false", tokCMCC, "text/csv", body)
	if first.code != 422 || first.body["stored"] != 2.0 {
		t.Fatalf("first try: %d %s", first.code, first.raw)
	}
	c.must(c.send("PUT", "/v1/cards/"+iccid(5), tokBilling, "application/json", `{"account_id":"a","plan_id":"p","carrier":"cmcc"}`), 200)
	again := c.must(c.send("POST", "/v1/usage?wait=false", tokCMCC, "text/csv", body), 200)
	if again.body["stored"] != 3.0 {
		t.Fatalf("the retry: %s", again.raw)
	}
	card := c.must(c.send("GET", fmt.Sprintf("/v1/cards/%s?min_position=%.0f", iccid(5), again.body["position"].(float64)), tokRead, "", ""), 200)
	if u := card.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 7 {
		t.Fatalf("the newly provisioned card's usage %v, want 7", u)
	}
	one := c.must(c.send("GET", "/v1/cards/"+iccid(1), tokRead, "", ""), 200)
	if u := one.body["cycle"].(map[string]any)["usage_bytes"].(float64); u != 2 {
		t.Fatalf("the other card's usage %v, want 2 (each record once)", u)
	}
}
