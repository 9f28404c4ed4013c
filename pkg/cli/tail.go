package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/cardmeter/cardmeter/pkg/event"
)

// Tail is `cardmeter tail`: it follows the events the fold emits (GET
// /v1/events/stream), a line each or --json, until interrupted; a dropped
// connection is made again with backoff, going on after the last event
// shown (Last-Event-ID), so none is missed or shown twice.
func Tail(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL); the token from CARDMETER_TOKEN")
	types := fs.String("type", "", "event types, comma-separated: exact (cardmeter.card.stopped.v1) or prefixes (cardmeter.card.*)")
	account := fs.String("account", "", "one account's events")
	iccid := fs.String("card", "", "one card's events")
	after := fs.String("after", "", "go on after this event id (a position in the log; default: from now)")
	asJSON := fs.Bool("json", false, "each event as its JSON, a line each")
	count := fs.Int("n", 0, "stop after this many events (0: follow until interrupted)")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	q := url.Values{}
	if *types != "" {
		q.Set("type", *types)
	}
	if *account != "" {
		q.Set("account_id", *account)
	}
	if *iccid != "" {
		q.Set("iccid", *iccid)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	last, shown := *after, 0
	bo := backoff.NewExponentialBackOff(backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		err := tailOnce(ctx, strings.TrimSuffix(*base, "/")+"/v1/events/stream?"+q.Encode(), os.Getenv("CARDMETER_TOKEN"), &last, func(e []byte) bool {
			if *asJSON {
				fmt.Fprintln(stdout, string(e))
			} else {
				var env event.Envelope
				if json.Unmarshal(e, &env) == nil {
					fmt.Fprintln(stdout, EventLine(&env))
				}
			}
			shown++
			bo.Reset()
			return *count == 0 || shown < *count
		})
		var ae *apiError
		switch {
		case errors.Is(err, errEnough), ctx.Err() != nil:
			return ExitOK
		case errors.As(err, &ae) && ae.status/100 == 4:
			return exitFor(err, stderr) // the same request would be refused again
		}
		wait := bo.NextBackOff()
		fmt.Fprintf(stderr, "tail: %v; again in %s, after event %s\n", err, wait.Round(time.Millisecond), orNone(last))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return ExitOK
}

var errEnough = errors.New("enough events")

func orNone(s string) string {
	if s == "" {
		return "(none yet)"
	}
	return s
}

// tailOnce reads the stream until it ends; each event's id is kept in
// last, for the next connection to go on after it.
func tailOnce(ctx context.Context, u, token string, last *string, show func([]byte) bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if *last != "" {
		req.Header.Set("Last-Event-ID", *last)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := &apiError{status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		_ = json.Unmarshal(b, &e.p)
		return e
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var id, kind string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		// the stream says where it starts: a reconnection before any event
		// was shown goes on from there, not from a later "now"
		if from, ok := strings.CutPrefix(line, ": cardmeter events from "); ok && *last == "" {
			if n, err := strconv.ParseUint(from, 10, 64); err == nil && n > 0 {
				*last = strconv.FormatUint(n-1, 10)
			}
			continue
		}
		switch {
		case line == "":
			switch kind {
			case "error":
				return fmt.Errorf("the stream: %s", data)
			case "gap":
				fmt.Fprintf(os.Stderr, "tail: events missed (past the stream's retention): %s\n", data)
				id, kind, data = "", "", nil
				continue
			}
			if len(data) > 0 {
				if id != "" {
					*last = id
				}
				if !show(data) {
					return errEnough
				}
			}
			id, kind, data = "", "", nil
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: ")...)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("the stream ended")
}
