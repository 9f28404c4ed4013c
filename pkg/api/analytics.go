package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Analytics is where the API reads ClickHouse for the console's charts,
// as the read-only analyst user: the figures the sink wrote, some seconds
// behind the fold.
type Analytics struct {
	Addrs    []string
	Database string
	User     string
	Password string

	mu   sync.Mutex
	conn driver.Conn
}

func (a *Analytics) open() (driver.Conn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn != nil {
		return a.conn, nil
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: a.Addrs,
		Auth:        clickhouse.Auth{Database: a.Database, Username: a.User, Password: a.Password},
		DialTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, MaxOpenConns: 4})
	if err != nil {
		return nil, err
	}
	a.conn = conn
	return conn, nil
}

// query runs one read; ClickHouse out of reach is a 503 saying so.
func (s *Server) analytics(ctx context.Context, sql string, args ...any) (driver.Rows, error) {
	if s.cfg.Analytics == nil {
		return nil, problem(http.StatusNotImplemented, "unavailable/analytics", "no analytics here", "this API has no ClickHouse to read (--clickhouse-addr)")
	}
	conn, err := s.cfg.Analytics.open()
	if err == nil {
		var rows driver.Rows
		if rows, err = conn.Query(ctx, sql, args...); err == nil {
			return rows, nil
		}
	}
	return nil, &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/clickhouse", "ClickHouse unavailable", err.Error())}
}

// DailyUsage is a card's usage on one day (Asia/Shanghai, as the rollups).
type DailyUsage struct {
	Day       string `json:"day"`
	BytesUp   uint64 `json:"bytes_up"`
	BytesDown uint64 `json:"bytes_down"`
	Records   uint64 `json:"records"`
}

// cardDailyUsage is GET /v1/cards/{iccid}/usage/daily?days=N: the card's
// usage per day over the last N days (default 62: this cycle and the
// last), from the ClickHouse rollups.
func (s *Server) cardDailyUsage(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	if _, err := s.visibleCard(r, iccid, ScopeRead); err != nil {
		return err
	}
	days, err := queryInt(r, "days", 62, 1, 400)
	if err != nil {
		return err
	}
	since := time.Unix(s.clock.Now(), 0).AddDate(0, 0, -days)
	rows, err := s.analytics(r.Context(), `SELECT toString(day), sum(bytes_up), sum(bytes_down), sum(records) FROM usage_daily_card
		WHERE iccid = ? AND day >= toDate(?) GROUP BY day ORDER BY day`, iccid, since)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []DailyUsage{}
	for rows.Next() {
		var d DailyUsage
		if err := rows.Scan(&d.Day, &d.BytesUp, &d.BytesDown, &d.Records); err != nil {
			return err
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return ok(w, map[string]any{"iccid": iccid, "days": out})
}

// StopsHour is how many stops or resumes of one reason an hour saw.
type StopsHour struct {
	Hour   string `json:"hour"`
	Kind   string `json:"kind"` // stopped, resumed
	Reason string `json:"reason"`
	Count  uint64 `json:"count"`
}

// fleetStops is GET /v1/fleet/stops?hours=N: stops and resumes per hour
// and reason over the last N hours of the log (default 72), from
// ClickHouse.
func (s *Server) fleetStops(w http.ResponseWriter, r *http.Request) error {
	hours, err := queryInt(r, "hours", 72, 1, 24*62)
	if err != nil {
		return err
	}
	since := time.Unix(s.clock.Now(), 0).Add(-time.Duration(hours) * time.Hour)
	// (a DateTime and the type, read plainly: ClickHouse 18.16 and 24.x alike)
	rows, err := s.analytics(r.Context(), `SELECT toStartOfHour(time) AS hour, type, reason, count()
		FROM card_events WHERE type IN ('cardmeter.card.stopped.v1', 'cardmeter.card.resumed.v1') AND time >= ?
		GROUP BY hour, type, reason ORDER BY hour, type, reason`, since)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []StopsHour{}
	for rows.Next() {
		var h StopsHour
		var at time.Time
		var typ string
		if err := rows.Scan(&at, &typ, &h.Reason, &h.Count); err != nil {
			return err
		}
		h.Hour, h.Kind = at.UTC().Format(time.RFC3339), map[bool]string{true: "stopped", false: "resumed"}[typ == "cardmeter.card.stopped.v1"]
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return ok(w, map[string]any{"hours": hours, "since": since.UTC().Format(time.RFC3339), "per_hour": out})
}

// queryInt reads an integer query parameter within bounds.
func queryInt(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, invalid(name, fmt.Sprintf("an integer from %d to %d", lo, hi))
	}
	return n, nil
}

// LedgerEntry is a payment or a charge on an account.
type LedgerEntry struct {
	Time      string `json:"time"`
	Kind      string `json:"kind"` // payment, charge
	AmountFen int64  `json:"amount_fen"`
	Reason    string `json:"reason,omitempty"` // a charge's reason, a payment's id
	ICCID     string `json:"iccid,omitempty"`  // a card's charge
	EventID   string `json:"event_id"`
}

// accountLedger is GET /v1/accounts/{account_id}/ledger?days=N: the
// account's payments and charges over the last N days (default 93), the
// newest first, at most 500, from ClickHouse.
func (s *Server) accountLedger(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("account_id")
	if !principal(r).May(ScopeRead, id) {
		return problem(http.StatusNotFound, "not-found/account", "no such account", id)
	}
	days, err := queryInt(r, "days", 93, 1, 800)
	if err != nil {
		return err
	}
	since := time.Unix(s.clock.Now(), 0).AddDate(0, 0, -days)
	rows, err := s.analytics(r.Context(), `SELECT time, kind, amount_fen, reason, iccid, event_id FROM (
		SELECT time, 'payment' AS kind, amount_fen, payment_id AS reason, '' AS iccid, event_id FROM payments FINAL WHERE account_id = ? AND time >= ?
		UNION ALL
		SELECT time, 'charge' AS kind, amount_fen, reason, iccid, event_id FROM charges FINAL WHERE account_id = ? AND time >= ?)
		ORDER BY time DESC, event_id DESC LIMIT 500`, id, since, id, since)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []LedgerEntry{}
	for rows.Next() {
		var e LedgerEntry
		var at time.Time
		if err := rows.Scan(&at, &e.Kind, &e.AmountFen, &e.Reason, &e.ICCID, &e.EventID); err != nil {
			return err
		}
		e.Time = at.UTC().Format(time.RFC3339)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return ok(w, map[string]any{"account_id": id, "since": since.UTC().Format(time.RFC3339), "entries": out})
}

// UsageRow is a counted usage record as ClickHouse keeps it.
type UsageRow struct {
	Carrier   string `json:"carrier"`
	RecordID  string `json:"record_id"`
	ICCID     string `json:"iccid"`
	StartTime string `json:"start_time"`
	EndTime   string `json:"end_time"`
	BytesUp   uint64 `json:"bytes_up"`
	BytesDown uint64 `json:"bytes_down"`
	APN       string `json:"apn,omitempty"`
	RAT       string `json:"rat,omitempty"`
	IMEI      string `json:"imei,omitempty"`
	CellID    string `json:"cell_id,omitempty"`
	Late      bool   `json:"late"`
	Received  string `json:"received_at"`
}

// cardRecord is GET /v1/cards/{iccid}/records/{carrier}/{record_id}: a
// counted record of the card, the cause an event names
// ("record:<carrier>/<record_id>"), from ClickHouse.
func (s *Server) cardRecord(w http.ResponseWriter, r *http.Request) error {
	iccid := r.PathValue("iccid")
	entry, err := s.visibleCard(r, iccid, ScopeRead)
	if err != nil {
		return err
	}
	rows, err := s.analytics(r.Context(), `SELECT carrier, record_id, iccid, start_time, end_time, bytes_up, bytes_down, apn, rat, imei, cell_id, late, received_at
		FROM usage_records FINAL WHERE account_id = ? AND iccid = ? AND carrier = ? AND record_id = ? LIMIT 1`,
		entry.AccountID, iccid, r.PathValue("carrier"), r.PathValue("record_id"))
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return problem(http.StatusNotFound, "not-found/record", "no such record in ClickHouse",
			"not counted for this card, or not yet written by the sink (it runs some seconds behind the fold)")
	}
	var u UsageRow
	var start, end, recv time.Time
	var late uint8
	if err := rows.Scan(&u.Carrier, &u.RecordID, &u.ICCID, &start, &end, &u.BytesUp, &u.BytesDown, &u.APN, &u.RAT, &u.IMEI, &u.CellID, &late, &recv); err != nil {
		return err
	}
	u.StartTime, u.EndTime, u.Received, u.Late = start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339), recv.UTC().Format(time.RFC3339), late == 1
	return ok(w, u)
}

// EventRow is an emitted event as ClickHouse keeps it (card_events).
type EventRow struct {
	EventID   string `json:"event_id"`
	Type      string `json:"type"`
	Time      string `json:"time"`
	ICCID     string `json:"iccid,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Cause     string `json:"cause,omitempty"`
	Detail    string `json:"detail,omitempty"`
	AmountFen int64  `json:"amount_fen,omitempty"`
	Balance   int64  `json:"balance_fen,omitempty"`
	Operator  string `json:"operator,omitempty"`
	Note      string `json:"note,omitempty"`
	Code      string `json:"code,omitempty"`
}

// CauseWindow is how far before the time a cause is asked about (?at=,
// the naming event's) its event may lie; without ?at=, the window ends at
// the log's time. A bounded window lets ClickHouse read only those months.
const CauseWindow = 93 * 24 * time.Hour

// causedLimit bounds the events a cause lists as its effects.
const causedLimit = 1000

// accountCause is GET /v1/accounts/{account_id}/causes/{id}?at=: what an
// event's cause "event:<id>" names, from ClickHouse. The id is either an
// emitted event (event is set) or an input (a command, payment or
// provisioning: no event row of its own); caused lists the account's
// events it caused (at most causedLimit; truncated says when more), each
// carrying the command's operator and note or the payment's amount.
func (s *Server) accountCause(w http.ResponseWriter, r *http.Request) error {
	account, id := r.PathValue("account_id"), r.PathValue("id")
	if !principal(r).May(ScopeRead, account) {
		return problem(http.StatusNotFound, "not-found/account", "no such account", account)
	}
	end := time.Unix(s.clock.Now(), 0)
	if v := r.URL.Query().Get("at"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return invalid("at", "not an RFC 3339 time with offset")
		}
		end = t
	}
	from, to := end.Add(-CauseWindow), end.Add(24*time.Hour)
	read := func(where string, limit int, args ...any) ([]EventRow, error) {
		rows, err := s.analytics(r.Context(), `SELECT event_id, type, time, iccid, reason, cause, detail, amount_fen, balance_fen, operator, note, code
			FROM card_events FINAL WHERE account_id = ? AND time >= ? AND time <= ? AND `+where+` ORDER BY time, event_id LIMIT `+strconv.Itoa(limit),
			append([]any{account, from, to}, args...)...)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := []EventRow{}
		for rows.Next() {
			var e EventRow
			var at time.Time
			if err := rows.Scan(&e.EventID, &e.Type, &at, &e.ICCID, &e.Reason, &e.Cause, &e.Detail, &e.AmountFen, &e.Balance, &e.Operator, &e.Note, &e.Code); err != nil {
				return nil, err
			}
			e.Time = at.UTC().Format(time.RFC3339)
			out = append(out, e)
		}
		return out, rows.Err()
	}
	own, err := read("event_id = ?", 1, id)
	if err != nil {
		return err
	}
	caused, err := read("cause = ?", causedLimit+1, "event:"+id)
	if err != nil {
		return err
	}
	var event *EventRow
	if len(own) == 1 {
		event = &own[0]
	}
	if event == nil && len(caused) == 0 {
		return problem(http.StatusNotFound, "not-found/cause", "nothing known of this cause",
			"no event of the account has this id or cause in the window, or the sink has not written it yet (it runs some seconds behind the fold)")
	}
	truncated := len(caused) > causedLimit
	if truncated {
		caused = caused[:causedLimit]
	}
	return ok(w, map[string]any{"account_id": account, "id": id, "event": event, "caused": caused, "truncated": truncated})
}
