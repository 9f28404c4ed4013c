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
