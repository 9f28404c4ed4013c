package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cli"
)

// frame is one server-sent event.
type frame struct {
	id, kind string
	account  string
	subject  string
}

// readStream reads the event stream at path with token for d (or until n
// frames), and returns its frames.
func readStream(t *testing.T, base, path, token, lastID string, d time.Duration, n int) []frame {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err) // (t.Error: it may run on another goroutine)
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("%s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		return nil
	}
	var out []frame
	var f frame
	sc := bufio.NewScanner(resp.Body)
	for (n == 0 || len(out) < n) && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			f.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			f.kind = line[7:]
		case strings.HasPrefix(line, "data: "):
			var e struct {
				Subject string `json:"subject"`
				Data    struct {
					AccountID string `json:"account_id"`
				} `json:"data"`
			}
			if err := json.Unmarshal([]byte(line[6:]), &e); err != nil {
				t.Errorf("data %q: %v", line, err)
				return out
			}
			f.account, f.subject = e.Data.AccountID, e.Subject
		case line == "" && (f.id != "" || f.kind != ""):
			out = append(out, f)
			f = frame{}
		}
	}
	return out
}

// The event stream: `cardmeter tail` shows the stops as they happen,
// filtered by type; a client that comes back with Last-Event-ID goes on
// after it; an account's token sees its account's events only; a
// shutdown ends the streams at once.
func TestEventStream(t *testing.T) {
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.Tokens += ";acme " + tokAcctA + " read:account:a"
	})
	t.Setenv("CARDMETER_TOKEN", tokRead)
	var tailOut, tailErr bytes.Buffer
	tailed := make(chan int, 1)
	go func() {
		// (from the start of the log: the stops may come before it connects)
		tailed <- cli.Tail([]string{"--url", p.URL, "--type", "cardmeter.card.stopped.v1", "--json", "-n", "2", "--after", "0"}, &tailOut, &tailErr)
	}()
	for _, n := range []int{1, 2} {
		c.must(c.send("POST", "/v1/cards/"+iccid(n)+"/stop", tokAdmin, "application/json", `{"operator":"ops"}`), 200)
	}
	select {
	case code := <-tailed:
		if code != cli.ExitOK {
			t.Fatalf("tail: exit %d: %s", code, tailErr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("tail did not show the two stops")
	}
	lines := strings.Split(strings.TrimSpace(tailOut.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"subject":"`+iccid(1)+`"`) || !strings.Contains(lines[1], `"subject":"`+iccid(2)+`"`) ||
		!strings.Contains(lines[0], `"type":"cardmeter.card.stopped.v1"`) {
		t.Fatalf("tail showed:\n%s", tailOut.String())
	}

	// from the start, by type: both stops; after the first, the second
	all := readStream(t, p.URL, "/v1/events/stream?after=0&type=cardmeter.card.stopped.v1", tokRead, "", 10*time.Second, 2)
	if len(all) != 2 || all[0].subject != iccid(1) || all[1].subject != iccid(2) || all[0].kind != "cardmeter.card.stopped.v1" {
		t.Fatalf("stops from the start: %+v", all)
	}
	again := readStream(t, p.URL, "/v1/events/stream?type=cardmeter.card.*", tokRead, all[0].id, 10*time.Second, 1)
	if len(again) != 1 || again[0].id != all[1].id {
		t.Fatalf("after Last-Event-ID %s: %+v, want %s", all[0].id, again, all[1].id)
	}
	// an account's token: its account's events, every one of them
	mine := readStream(t, p.URL, "/v1/events/stream?after=0", tokAcctA, "", 2*time.Second, 0)
	stops := 0
	for _, f := range mine {
		if f.account != "a" {
			t.Fatalf("account a's token got %+v", f)
		}
		if f.kind == "cardmeter.card.stopped.v1" {
			stops++
		}
	}
	if stops != 1 {
		t.Fatalf("account a's token got %d stops in %+v", stops, mine)
	}
	// a bad filter is named
	if r := c.send("GET", "/v1/events/stream?type=stopped", tokRead, "", ""); r.code != 400 || r.body["field"] != "type" {
		t.Fatalf("a bad type: %d %s", r.code, r.raw)
	}

	// a client coming back after what the stream still keeps hears what it
	// missed (the log's events up to the second stop purged)
	events, err := p.JS.Stream(context.Background(), broker.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := strconv.ParseUint(all[1].id, 10, 64)
	if err := events.Purge(context.Background(), jetstream.WithPurgeSequence(second)); err != nil {
		t.Fatal(err)
	}
	back := readStream(t, p.URL, "/v1/events/stream?type=cardmeter.card.stopped.v1", tokRead, "0", 10*time.Second, 2)
	if len(back) != 2 || back[0].kind != "gap" || back[1].id != all[1].id {
		t.Fatalf("after a purge: %+v", back)
	}

	// a shutdown does not wait for a stream's client
	open := make(chan struct{})
	go func() {
		defer close(open)
		readStream(t, p.URL, "/v1/events/stream", tokRead, "", time.Minute, 0)
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	p.Stop()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("stopping with a stream open took %s", took)
	}
	select {
	case <-open:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream was not ended by the shutdown")
	}

}
