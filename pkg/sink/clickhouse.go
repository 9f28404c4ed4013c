// Package sink writes what the projector accepted and emitted into
// ClickHouse in blocks, acknowledging JetStream only after the insert.
package sink

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
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
		ReadTimeout: 2 * time.Minute,
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

// Migration is one numbered DDL file of schemas/clickhouse.
type Migration struct {
	Version uint32
	Name    string
	SQL     string
}

// Migrations lists the DDL files in version order.
func Migrations() ([]Migration, error) {
	names, err := fs.Glob(schemas.ClickHouse, "clickhouse/*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []Migration
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: the name must start with its number and '_'", base)
		}
		b, err := fs.ReadFile(schemas.ClickHouse, name)
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: uint32(v), Name: base, SQL: string(b)})
	}
	return out, nil
}

// Migrate applies, in order, the migrations not yet recorded in the
// schema_migrations table, and records each once applied. Statements are
// idempotent (IF NOT EXISTS), so a crash halfway through a file is mended
// by running it again.
func Migrate(ctx context.Context, conn driver.Conn) error {
	if err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations
		(version UInt32, name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version`); err != nil {
		return fmt.Errorf("schema_migrations: %w", err)
	}
	applied := map[uint32]bool{}
	rows, err := conn.Query(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return err
	}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	rows.Close()
	ms, err := Migrations()
	if err != nil {
		return err
	}
	for _, m := range ms {
		if applied[m.Version] {
			continue
		}
		for _, stmt := range Statements(m.SQL) {
			if err := conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", m.Name, err)
			}
		}
		if err := record(ctx, conn, m); err != nil {
			return fmt.Errorf("%s: recording: %w", m.Name, err)
		}
	}
	return nil
}

// record notes a migration as applied. (An INSERT goes as a block: on
// 18.16 an INSERT with bound VALUES through Exec waits for data forever.)
func record(ctx context.Context, conn driver.Conn, m Migration) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
	if err != nil {
		return err
	}
	if err := b.Append(m.Version, m.Name, time.Now()); err != nil {
		return err
	}
	return b.Send()
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
