package sink

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
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
	// Addr is host:port of the native protocol; for the replicas of a
	// cluster, several, comma-separated: the first that answers is used,
	// for writes and the reads back alike, and the next when it fails.
	Addr     string
	Database string
	User     string
	Password string
	// Cluster, when set, names the ClickHouse cluster (its remote_servers)
	// whose replicas hold the tables: the schema is created ON CLUSTER, as
	// Replicated*MergeTree tables in ZooKeeper (the servers' {shard} and
	// {replica} macros), so that a stopped replica catches up and a block
	// sent again to another replica is dropped as a repeat.
	Cluster string
}

// Addrs lists the addresses in Addr.
func (c ClickHouseConfig) Addrs() []string {
	var out []string
	for _, a := range strings.Split(c.Addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Open connects to ClickHouse and creates the database when missing (on
// every replica of the cluster, if there is one).
func Open(ctx context.Context, cfg ClickHouseConfig) (driver.Conn, error) {
	if cfg.User == "" {
		cfg.User = "default"
	}
	opts := &clickhouse.Options{
		Addr:             cfg.Addrs(),
		Auth:             clickhouse.Auth{Username: cfg.User, Password: cfg.Password},
		DialTimeout:      5 * time.Second,
		ReadTimeout:      2 * time.Minute,
		Compression:      &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		ConnOpenStrategy: clickhouse.ConnOpenInOrder, // one replica while it answers: reads see its own writes
		MaxOpenConns:     16,
	}
	boot, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	if err := createDatabase(ctx, boot, cfg); err != nil {
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

func createDatabase(ctx context.Context, conn driver.Conn, cfg ClickHouseConfig) error {
	if cfg.Cluster == "" {
		return conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(cfg.Database))
	}
	// ON CLUSTER only when this replica lacks it: the statement waits for
	// every replica, and one may be down
	if ok, err := exists(ctx, conn, "SELECT count() FROM system.databases WHERE name = ?", cfg.Database); err != nil || ok {
		return err
	}
	return onCluster(ctx, conn, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(cfg.Database)+" ON CLUSTER "+quoteIdent(cfg.Cluster))
}

func exists(ctx context.Context, conn driver.Conn, q string, args ...any) (bool, error) {
	var n uint64
	if err := conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return false, err
	}
	return n > 0, nil
}

// onCluster runs a distributed DDL statement. If a replica does not
// finish it in time (it is down), the statement stays queued in
// ZooKeeper and the replica runs it when it is back: that is not a
// failure here.
func onCluster(ctx context.Context, conn driver.Conn, stmt string) error {
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"distributed_ddl_task_timeout": 30}))
	err := conn.Exec(ctx, stmt)
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && ex.Code == 159 { // TIMEOUT_EXCEEDED
		return nil
	}
	return err
}

// Migrate applies, in order, the migrations not yet recorded in the
// schema_migrations table, and records each once applied. Statements are
// idempotent (IF NOT EXISTS), so a crash halfway through a file is mended
// by running it again. On a cluster (cfg.Cluster) each statement runs ON
// CLUSTER with replicated engines (see Replicated).
func Migrate(ctx context.Context, conn driver.Conn, cfg ClickHouseConfig) error {
	const ddl = `CREATE TABLE IF NOT EXISTS schema_migrations
		(version UInt32, name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version`
	exec := func(stmt string) error { return conn.Exec(ctx, stmt) }
	if cfg.Cluster != "" {
		exec = func(stmt string) error {
			r, err := Replicated(stmt, cfg.Database, cfg.Cluster)
			if err != nil {
				return err
			}
			return onCluster(ctx, conn, r)
		}
	}
	if ok, err := exists(ctx, conn, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'schema_migrations'"); err != nil {
		return err
	} else if !ok {
		if err := exec(ddl); err != nil {
			return fmt.Errorf("schema_migrations: %w", err)
		}
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
			// ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: a column
			// that is there already (a migration cut short, a replica's
			// ALTER replicated here) is not added again
			if a := addColumn.FindStringSubmatch(strings.TrimSpace(stmt)); a != nil {
				if there, err := exists(ctx, conn, "SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = ? AND name = ?", a[1], a[2]); err != nil {
					return fmt.Errorf("%s: %w", m.Name, err)
				} else if there {
					continue
				}
			}
			if err := exec(stmt); err != nil && !columnThere(stmt, err) {
				return fmt.Errorf("%s: %w", m.Name, err)
			}
		}
		if err := record(ctx, conn, m); err != nil {
			return fmt.Errorf("%s: recording: %w", m.Name, err)
		}
	}
	return nil
}

// columnThere reports whether an ADD COLUMN failed because the column is
// there already: another replica's replicated ALTER, or another sink's
// migration, came first (ClickHouse 18.16: code 44, "Cannot add column").
func columnThere(stmt string, err error) bool {
	var ex *clickhouse.Exception
	return addColumn.MatchString(strings.TrimSpace(stmt)) && errors.As(err, &ex) && ex.Code == 44 &&
		strings.Contains(ex.Message, "already exists")
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

// DeduplicationWindow is how many recent blocks a replicated table
// remembers in ZooKeeper to drop a repeat: it must reach back past every
// block the sinks insert between a block and its repeat by a new owner,
// not only the default 100. The repeat comes once a unit's lease has
// lapsed (10 s by default) and another sink took it; meanwhile each unit
// inserts at most a block a second: 10,000 blocks is five minutes of 33
// units.
const DeduplicationWindow = 10000

var (
	createTable = regexp.MustCompile(`^(?is)CREATE TABLE IF NOT EXISTS (\w+)\s`)
	createView  = regexp.MustCompile(`^(?is)CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS\s`)
	dropTable   = regexp.MustCompile(`^(?is)DROP TABLE IF EXISTS (\w+)$`)
	addColumn   = regexp.MustCompile(`^(?is)ALTER TABLE (\w+) ADD COLUMN (\w+)\s`)
	fromTable   = regexp.MustCompile(`(?i)\bFROM (\w+)\b`)
	engine      = regexp.MustCompile(`(?i)ENGINE\s*=\s*(\w*)MergeTree\(((?:[^()]|\([^()]*\))*)\)`)
)

// Replicated rewrites a DDL statement of schemas/clickhouse for a cluster:
// names qualified with the database (a statement ON CLUSTER runs on each
// replica outside this session), ON CLUSTER after the name, each
// MergeTree engine its Replicated one at /clickhouse/tables/{shard}/<db>/<table>,
// with a deduplication window reaching far back. A statement of a kind it
// does not know is refused, so that a new migration cannot reach a
// cluster unreplicated.
func Replicated(stmt, database, cluster string) (string, error) {
	db, on := quoteIdent(database), " ON CLUSTER "+quoteIdent(cluster)
	stmt = strings.TrimSpace(stmt)
	switch {
	case createTable.MatchString(stmt):
		table := createTable.FindStringSubmatch(stmt)[1]
		if !engine.MatchString(stmt) {
			return "", fmt.Errorf("table %s: no MergeTree engine to replicate", table)
		}
		if strings.Contains(stmt, "Replicated") {
			return "", fmt.Errorf("table %s: already replicated; write the plain engine in schemas/clickhouse", table)
		}
		stmt = createTable.ReplaceAllString(stmt, "CREATE TABLE IF NOT EXISTS "+db+".$1"+on+"\n")
		stmt = engine.ReplaceAllStringFunc(stmt, func(e string) string {
			m := engine.FindStringSubmatch(e)
			args := fmt.Sprintf("'/clickhouse/tables/{shard}/%s/%s', '{replica}'", database, table)
			if strings.TrimSpace(m[2]) != "" {
				args += ", " + m[2]
			}
			return "ENGINE = Replicated" + m[1] + "MergeTree(" + args + ")"
		})
		if strings.Contains(strings.ToUpper(stmt), "SETTINGS") {
			return "", fmt.Errorf("table %s: has SETTINGS of its own; add the deduplication window there", table)
		}
		return stmt + fmt.Sprintf("\nSETTINGS replicated_deduplication_window = %d", DeduplicationWindow), nil
	case createView.MatchString(stmt):
		stmt = createView.ReplaceAllString(stmt, "CREATE MATERIALIZED VIEW IF NOT EXISTS "+db+".$1"+on+" TO "+db+".$2 AS\n")
		return fromTable.ReplaceAllString(stmt, "FROM "+db+".$1"), nil
	case dropTable.MatchString(stmt):
		return dropTable.ReplaceAllString(stmt, "DROP TABLE IF EXISTS "+db+".$1"+on), nil
	case addColumn.MatchString(stmt):
		// a replicated table's ALTER is replicated: ON CLUSTER runs it on
		// one replica of each shard
		return addColumn.ReplaceAllString(stmt, "ALTER TABLE "+db+".$1"+on+" ADD COLUMN $2 "), nil
	}
	first, _, _ := strings.Cut(stmt, "\n")
	return "", fmt.Errorf("a statement of a kind not known on a cluster: %q", first)
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "") + "`" }
