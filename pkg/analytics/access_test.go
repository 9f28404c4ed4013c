package analytics_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// The analyst user (deploy/local/clickhouse-users.xml, and
// deploy/clickhouse/users.xml for production) reads and runs the shipped
// queries, and is refused writes and DDL.
func TestAnalystIsReadOnly(t *testing.T) {
	ch := testenv.ClickHouse(t)
	owner := testenv.ClickHouseConn(t, ch) // creates the database
	if err := owner.Exec(context.Background(), "CREATE TABLE t (a UInt8) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Addr}, DialTimeout: 3 * time.Second,
		Auth: clickhouse.Auth{Database: ch.Database, Username: "analyst", Password: "analyst"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	var one uint8
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("analyst cannot read: %v", err)
	}
	for _, q := range []string{
		"CREATE TABLE x (a UInt8) ENGINE = Memory",
		"CREATE DATABASE analyst_was_here",
		"SET max_memory_usage = 1",
	} {
		err := conn.Exec(ctx, q)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "readonly") {
			t.Errorf("analyst ran %q: %v", q, err)
		}
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO t (a)")
	if err == nil {
		_ = b.Append(uint8(1))
		err = b.Send()
	}
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "readonly") {
		t.Errorf("analyst inserted: %v", err)
	}
}
