// Command notifier runs cardmeter's webhook deliveries alone, against an
// external NATS (--nats-url). See pkg/app for the flags.
package main

import (
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
)

func main() {
	os.Exit(app.Main("notifier", []string{app.RoleNotifier}, os.Args[1:]))
}
