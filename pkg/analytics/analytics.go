// Package analytics runs the analysts' queries shipped in
// schemas/clickhouse/queries: each is a .sql file whose positional
// parameters are described in its header comment.
package analytics

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/cardmeter/cardmeter/schemas"
)

// Names lists the shipped queries.
func Names() []string {
	files, _ := fs.Glob(schemas.Queries, "clickhouse/queries/*.sql")
	out := make([]string, 0, len(files))
	for _, f := range files {
		out = append(out, strings.TrimSuffix(path.Base(f), ".sql"))
	}
	sort.Strings(out)
	return out
}

// SQL returns a query's text.
func SQL(name string) (string, error) {
	b, err := fs.ReadFile(schemas.Queries, "clickhouse/queries/"+name+".sql")
	if err != nil {
		return "", fmt.Errorf("no query %q (have %s)", name, strings.Join(Names(), ", "))
	}
	return string(b), nil
}

// Run runs a shipped query with its parameters.
func Run(ctx context.Context, conn driver.Conn, name string, args ...any) (driver.Rows, error) {
	q, err := SQL(name)
	if err != nil {
		return nil, err
	}
	if want := strings.Count(stripComments(q), "?"); want != len(args) {
		return nil, fmt.Errorf("query %s takes %d parameters, got %d", name, want, len(args))
	}
	return conn.Query(ctx, q, args...)
}

func stripComments(q string) string {
	var b strings.Builder
	for _, line := range strings.Split(q, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}
