// Command ingest runs cardmeter's ingest service alone, against an external NATS
// (--nats-url) and, for the sink, ClickHouse. See pkg/app for the flags.
package main

import (
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
)

func main() {
	os.Exit(app.Main("ingest", []string{app.RoleAPI}, os.Args[1:]))
}
