package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
)

// MaxStreams is how many event streams an API serves at once.
const MaxStreams = 256

// streamPoll is how often a stream that has caught up asks the log for
// what came since (the API's NATS user reads single messages of EVENTS,
// not consumers).
const streamPoll = 300 * time.Millisecond

// streamFilter is what GET /v1/events/stream sends: types (exact, or a
// prefix ending in ".*"), one card, and the accounts the caller may see.
type streamFilter struct {
	types    []string
	iccid    string
	account  string
	accounts map[string]bool // nil: every account (and events of none)
}

// subject narrows the log's reads to what the filter can take.
func (f *streamFilter) subject() string {
	card := "*"
	if f.iccid != "" {
		card = f.iccid
	}
	if len(f.types) == 1 {
		kind := strings.TrimPrefix(f.types[0], "cardmeter.")
		switch {
		case strings.HasSuffix(kind, ".*") && strings.Count(kind, ".") == 1:
			return broker.EventSubject(strings.TrimSuffix(kind, ".*")+".*", card)
		case strings.HasSuffix(kind, ".v1"):
			return broker.EventSubject(strings.TrimSuffix(kind, ".v1"), card)
		}
	}
	if f.iccid != "" {
		return broker.EventSubject("*.*", f.iccid)
	}
	return "cardmeter.events.>"
}

func (f *streamFilter) takes(typ, account string) bool {
	if len(f.types) > 0 && !slices.ContainsFunc(f.types, func(t string) bool {
		p, prefix := strings.CutSuffix(t, "*")
		return t == typ || (prefix && strings.HasPrefix(typ, p))
	}) {
		return false
	}
	if f.account != "" && account != f.account {
		return false
	}
	return f.accounts == nil || f.accounts[account]
}

// streamEvents is GET /v1/events/stream: the events the fold emits, as
// server-sent events, each with its position in the log as its id. A
// client that reconnects with Last-Event-ID (or ?after=) goes on after
// it; one without starts with what comes next. Filters: type (repeated,
// exact or "cardmeter.card.*"), iccid, account_id; an account's token
// sees its accounts' events only.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := &streamFilter{iccid: q.Get("iccid"), account: q.Get("account_id")}
	for _, t := range q["type"] {
		for _, one := range strings.Split(t, ",") {
			if one = strings.TrimSpace(one); one != "" {
				if !strings.HasPrefix(one, "cardmeter.") {
					return invalid("type", "an event type (cardmeter.card.stopped.v1) or a prefix (cardmeter.card.*)")
				}
				f.types = append(f.types, one)
			}
		}
	}
	if accounts, limited := principal(r).Accounts(ScopeRead); limited {
		f.accounts = map[string]bool{}
		for _, a := range accounts {
			f.accounts[a] = true
		}
	}
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		return &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/streams", "too many event streams",
			fmt.Sprintf("this API serves %d event streams at once; retry later, or follow EVENTS on NATS", cap(s.streams)))}
	}
	stream, err := s.js.Stream(r.Context(), broker.StreamEvents)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	var next uint64
	after := r.Header.Get("Last-Event-ID")
	if after == "" {
		after = q.Get("after")
	}
	if after != "" {
		n, err := strconv.ParseUint(after, 10, 64)
		if err != nil {
			return invalid("after", "the id of the last event received (Last-Event-ID)")
		}
		next = n + 1
	} else {
		info, err := stream.Info(r.Context())
		if err != nil {
			return fmt.Errorf("%w: %v", errUnavailable, err)
		}
		next = info.State.LastSeq + 1
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(time.Minute)) // the server's write timeout is for answers, not streams
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	if err := write([]byte(": cardmeter events from " + strconv.FormatUint(next, 10) + "\n\n")); err != nil {
		return nil
	}
	// a client coming back after what the stream still keeps is told what
	// it missed, not served the rest as if nothing were
	if after != "" {
		if info, err := stream.Info(r.Context()); err == nil && next < info.State.FirstSeq {
			gap := fmt.Sprintf(`{"missed_from":%d,"missed_to":%d,"detail":"events past the stream's retention are gone; from here on none is missed"}`,
				next, info.State.FirstSeq-1)
			if write([]byte("event: gap\ndata: "+gap+"\n\n")) != nil {
				return nil
			}
			next = info.State.FirstSeq
		}
	}
	subject := f.subject()
	var head struct {
		Type string `json:"type"`
		Data struct {
			AccountID string `json:"account_id"`
		} `json:"data"`
	}
	quiet := time.Now()
	for {
		select {
		case <-s.endStream:
			return nil
		default:
		}
		m, err := stream.GetMsg(r.Context(), next, jetstream.WithGetMsgSubject(subject))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			// caught up: a keep-alive now and then, and look again
			if time.Since(quiet) > 15*time.Second {
				if write([]byte(": keep-alive\n\n")) != nil {
					return nil
				}
				quiet = time.Now()
			}
			select {
			case <-r.Context().Done():
				return nil
			case <-s.endStream:
				return nil // shutting down: the client reconnects elsewhere, with its last id
			case <-time.After(streamPoll):
			}
			continue
		case err != nil:
			if r.Context().Err() != nil {
				return nil
			}
			// the log out of reach: the client reconnects with its last id
			_ = write([]byte("event: error\ndata: " + strconv.Quote(err.Error()) + "\n\n"))
			return nil
		}
		next = m.Sequence + 1
		head.Type, head.Data.AccountID = "", ""
		if json.Unmarshal(m.Data, &head) != nil || !f.takes(head.Type, head.Data.AccountID) {
			// skipping a long way: the client hears the stream is alive
			if time.Since(quiet) > 15*time.Second {
				if write([]byte(": keep-alive\n\n")) != nil {
					return nil
				}
				quiet = time.Now()
			}
			continue
		}
		frame := make([]byte, 0, len(m.Data)+64)
		frame = append(frame, "id: "...)
		frame = strconv.AppendUint(frame, m.Sequence, 10)
		frame = append(frame, "\nevent: "...)
		frame = append(frame, head.Type...)
		frame = append(frame, "\ndata: "...)
		frame = append(frame, m.Data...)
		frame = append(frame, "\n\n"...)
		if write(frame) != nil {
			return nil
		}
		quiet = time.Now()
	}
}
