// Command cardmeter is the all-in-one and the client: `cardmeter run`
// starts the ingest API, projector, clock, sink and notifier in one process on an
// embedded JetStream; `cardmeter push` sends usage files to an API.
package main

import (
	"fmt"
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
	"github.com/cardmeter/cardmeter/pkg/cli"
)

const usage = `usage: cardmeter <command> [flags]

commands:
  run          start the whole pipeline in one process (flags: cardmeter run -h)
  notifier     deliver events to the webhooks alone (flags as run's)
  push         stream usage files (CSV, NDJSON, plain or gzip) to the API
  card         show a card, its events; stop or resume it (card -h)
  account      show an account
  status       the pipeline's health: lag, backlog, ClickHouse, partitions
  tail         follow the events the fold emits (--type, --account, --card, --json)
  rejections   list rejected records, or re-submit them once fixed
  rebuild      rebuild the ClickHouse tables from the log
  reconcile    compare a carrier's cards with cardmeter's, and mend the drift
  setup        create the streams and buckets on a NATS server, as its admin
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(app.Main("cardmeter", app.AllRoles, os.Args[2:]))
	case "notifier":
		os.Exit(app.Main("notifier", []string{app.RoleNotifier}, os.Args[2:]))
	case "card":
		os.Exit(cli.Card(os.Args[2:], os.Stdout, os.Stderr))
	case "account":
		os.Exit(cli.Account(os.Args[2:], os.Stdout, os.Stderr))
	case "tail":
		os.Exit(cli.Tail(os.Args[2:], os.Stdout, os.Stderr))
	case "status":
		os.Exit(cli.Status(os.Args[2:], os.Stdout, os.Stderr))
	case "push":
		os.Exit(cli.Push(os.Args[2:], os.Stdout, os.Stderr))
	case "rejections":
		os.Exit(cli.Rejections(os.Args[2:], os.Stdout, os.Stderr))
	case "reconcile":
		os.Exit(cli.Reconcile(os.Args[2:], os.Stdout, os.Stderr))
	case "rebuild":
		os.Exit(cli.Rebuild(os.Args[2:], os.Stdout, os.Stderr))
	case "setup":
		os.Exit(cli.Setup(os.Args[2:], os.Stdout, os.Stderr))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "cardmeter: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
