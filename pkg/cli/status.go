package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/cardmeter/cardmeter/pkg/api"
)

// ExitUnhealthy is status's exit when the pipeline needs a look.
const ExitUnhealthy = 6

// Status is `cardmeter status`: the pipeline as its roles last reported
// (GET /v1/status). Exit 0 healthy, 6 something needs a look (printed), 1
// the API did not answer.
func Status(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL); the token from CARDMETER_TOKEN")
	asJSON := fs.Bool("json", false, "the API's answer as JSON")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	c := &client{base: strings.TrimSuffix(*base, "/"), token: os.Getenv("CARDMETER_TOKEN"), http: &http.Client{Timeout: time.Minute}}
	var st api.StatusResponse
	if err := c.do("GET", "/v1/status", nil, &st); err != nil {
		return exitFor(err, stderr)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		printStatus(stdout, &st)
	}
	if !st.Healthy {
		return ExitUnhealthy
	}
	return ExitOK
}

func printStatus(w io.Writer, st *api.StatusResponse) {
	word := "healthy"
	if !st.Healthy {
		word = "NEEDS A LOOK"
	}
	fmt.Fprintf(w, "pipeline      %s (%d role instances reporting)\n", word, len(st.Instances))
	if st.ProjectorLag != nil {
		fmt.Fprintf(w, "projector     %d messages behind (%.0f s)\n", *st.ProjectorLag, *st.ProjectorLagSecs)
	} else {
		fmt.Fprintln(w, "projector     unknown: none reporting")
	}
	switch {
	case st.SinkPending == nil:
		fmt.Fprintln(w, "sink          unknown: none reporting")
	case *st.ClickHouseUp:
		fmt.Fprintf(w, "sink          %d messages waiting; ClickHouse up\n", *st.SinkPending)
	default:
		fmt.Fprintf(w, "sink          %d messages waiting; ClickHouse DOWN\n", *st.SinkPending)
	}
	if st.IngestPerSecond != nil {
		fmt.Fprintf(w, "ingest        %.0f records/s, %.0f rejected/s\n", *st.IngestPerSecond, *st.RejectedPerSecond)
	} else {
		fmt.Fprintln(w, "ingest        no rate yet")
	}
	for _, p := range st.Partitions {
		state := "ready"
		switch {
		case p.Owner == "":
			state = "NOT HELD"
		case p.Error != "":
			state = "RETRYING: " + p.Error
		case !p.Ready:
			state = "restoring"
		}
		line := fmt.Sprintf("partition %-3d %s", p.ID, state)
		if p.Owner != "" {
			line += "  by " + p.Owner
		}
		if p.Cards != nil {
			line += fmt.Sprintf("  %d cards", *p.Cards)
		}
		if p.CheckpointAgeSeconds != nil {
			line += fmt.Sprintf("  checkpoint %.0f s ago", *p.CheckpointAgeSeconds)
		}
		fmt.Fprintln(w, line)
	}
	for _, p := range st.Problems {
		fmt.Fprintln(w, "problem       "+p)
	}
}
