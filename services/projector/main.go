// Command projector runs cardmeter's projector service alone, against an external NATS
// (--nats-url) and, for the sink, ClickHouse. See pkg/app for the flags.
package main

import (
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
)

func main() {
	os.Exit(app.Main("projector", []string{app.RoleProjector}, os.Args[1:]))
}
