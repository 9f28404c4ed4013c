// Command clock runs cardmeter's clock service alone, against an external NATS
// (--nats-url) and, for the sink, ClickHouse. See pkg/app for the flags.
package main

import (
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
)

func main() {
	os.Exit(app.Main("clock", []string{app.RoleClock}, os.Args[1:]))
}
