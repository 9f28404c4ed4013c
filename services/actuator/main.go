// Command actuator runs cardmeter's carrier actuation alone, against an
// external NATS (--nats-url) and the carriers of --actuator-config. See
// pkg/app for the flags.
package main

import (
	"os"

	"github.com/cardmeter/cardmeter/pkg/app"
)

func main() {
	os.Exit(app.Main("actuator", []string{app.RoleActuator}, os.Args[1:]))
}
