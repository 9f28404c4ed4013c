// Package sink writes what the projector accepted and emitted into
// ClickHouse in blocks, acknowledging JetStream only after the insert.
package sink

import (
	"context"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/schemas"
)

// ClickHouseConfig says where ClickHouse is.
type ClickHouseConfig struct {
	Addr     string // host:port of the native protocol
	Database string
	User     string
	Password string
}

// Open connects to ClickHouse and creates the database when missing.
func Open(ctx context.Context, cfg ClickHouseConfig) (driver.Conn, error) {
	if cfg.User == "" {
		cfg.User = "default"
	}
	opts := &clickhouse.Options{
		Addr:        []string{cfg.Addr},
		Auth:        clickhouse.Auth{Username: cfg.User, Password: cfg.Password},
		DialTimeout: 5 * time.Second,
		Compression: &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	}
	boot, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	if err := boot.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(cfg.Database)); err != nil {
		boot.Close()
		return nil, fmt.Errorf("clickhouse %s: creating database: %w", cfg.Addr, err)
	}
	boot.Close()
	opts.Auth.Database = cfg.Database
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	return conn, nil
}

// Migrate applies the DDL files of schemas/clickhouse in name order. Every
// statement is idempotent (IF NOT EXISTS).
func Migrate(ctx context.Context, conn driver.Conn) error {
	names, err := fs.Glob(schemas.ClickHouse, "clickhouse/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		b, err := fs.ReadFile(schemas.ClickHouse, name)
		if err != nil {
			return err
		}
		for _, stmt := range Statements(string(b)) {
			if err := conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return nil
}

// Statements splits a DDL file into statements: comment lines are dropped
// and a statement ends with a semicolon at the end of a line.
func Statements(src string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(t, ";") {
			s := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";")
			out = append(out, s)
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "") + "`" }
