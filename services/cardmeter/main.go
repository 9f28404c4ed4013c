// Command cardmeter is the all-in-one: `cardmeter run` starts the ingest
// API, projector, clock and sink in one process on an embedded JetStream.
package main

import (
	"fmt"
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
)

const usage = `usage: cardmeter <command> [flags]

commands:
  run     start the whole pipeline in one process (flags: cardmeter run -h)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(app.Main("cardmeter", app.AllRoles, os.Args[2:]))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "cardmeter: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
