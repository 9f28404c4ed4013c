package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/cardmeter/cardmeter/pkg/actuate"
)

// Exit code of reconcile: drift is left (found without --fix, or drift
// a resync cannot mend).
const ExitDrift = 4

// Reconcile is `cardmeter reconcile --carrier X`: it lists the carrier's
// cards through its driver (--actuator-config) and cardmeter's through the
// API, reports how they differ (and writes the finding to the log, for
// carrier.drift_detected.v1), and with --fix asks for each drifted card's
// state to be sent to the carrier again (POST /v1/cards/{iccid}/resync):
// the actuator sends it in order with the card's other actions.
func Reconcile(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apiURL := fs.String("url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL); the token (scopes read and operator) from CARDMETER_TOKEN")
	carrier := fs.String("carrier", os.Getenv("CARDMETER_CARRIER"), "the carrier to reconcile")
	config := fs.String("actuator-config", getenv("CARDMETER_ACTUATOR_CONFIG", ""), "the carriers' drivers (the actuator's file)")
	fix := fs.Bool("fix", false, "send each drifted card the action that makes the carrier agree with cardmeter")
	asJSON := fs.Bool("json", false, "the report as JSON")
	timeout := fs.Duration("timeout", time.Hour, "how long the whole reconciliation may take")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if *carrier == "" || *config == "" {
		fmt.Fprintln(stderr, "usage: cardmeter reconcile --carrier C --actuator-config FILE [--fix] [--json]")
		return ExitUsage
	}
	drivers, err := actuate.LoadConfig(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitFailed
	}
	drv, ok := drivers[*carrier]
	if !ok {
		fmt.Fprintf(stderr, "%s has no driver for carrier %q\n", *config, *carrier)
		return ExitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cm := &client{base: strings.TrimSuffix(*apiURL, "/"), token: os.Getenv("CARDMETER_TOKEN"), http: &http.Client{Timeout: time.Minute}}
	var mend actuate.Mend
	if *fix {
		run := time.Now().UTC().Format("20060102T150405.000000000")
		mend = func(ctx context.Context, c actuate.CardmeterCard, kind string) error {
			// the same key for the same run: a retried request is one resync
			_, err := cm.doStatus(ctx, "POST", "/v1/cards/"+url.PathEscape(c.ICCID)+"/resync", "reconcile-"+run+"-"+c.ICCID,
				map[string]any{"operator": "cardmeter reconcile", "reason": "reconcile: " + kind}, nil)
			return err
		}
	}
	d, err := actuate.Reconcile(ctx, *carrier, drv, cm.cards, mend)
	if err != nil {
		fmt.Fprintln(stderr, "reconcile:", err)
		return ExitFailed
	}
	if d.Total() > 0 {
		cards := []string{}
		for _, k := range actuate.DriftKinds {
			cards = append(cards, d.Cards[k]...)
		}
		if _, err := cm.doStatus(ctx, "POST", "/v1/carriers/"+url.PathEscape(*carrier)+"/drift", "",
			map[string]any{"counts": d.Counts(), "cards": cards[:min(len(cards), 100)], "sent": d.Sent}, nil); err != nil {
			d.Failed = append(d.Failed, "writing the finding to the log: "+err.Error())
		}
	}
	if *asJSON {
		b, _ := json.MarshalIndent(d, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		printDrift(stdout, d, *fix)
	}
	switch {
	case len(d.Failed) > 0:
		return ExitFailed
	case d.Unmendable() > 0 || (!*fix && d.Total() > 0):
		return ExitDrift
	}
	return ExitOK // they agree, or every drifted card's resync is in the log
}

// cards pages GET /v1/cards for Reconcile.
func (c *client) cards(ctx context.Context, cursor string) ([]actuate.CardmeterCard, string, error) {
	var page struct {
		Cards []struct {
			ICCID       string   `json:"iccid"`
			AccountID   string   `json:"account_id"`
			Carrier     string   `json:"carrier"`
			Status      string   `json:"status"`
			StopReasons []string `json:"stop_reasons"`
		} `json:"cards"`
		NextCursor string `json:"next_cursor"`
	}
	if _, err := c.doStatus(ctx, "GET", "/v1/cards?limit=1000&cursor="+url.QueryEscape(cursor), "", nil, &page); err != nil {
		return nil, "", fmt.Errorf("GET /v1/cards: %w", err)
	}
	out := make([]actuate.CardmeterCard, 0, len(page.Cards))
	for _, c := range page.Cards {
		out = append(out, actuate.CardmeterCard{ICCID: c.ICCID, AccountID: c.AccountID, Carrier: c.Carrier, Status: c.Status, Reasons: c.StopReasons})
	}
	return out, page.NextCursor, nil
}

func printDrift(w io.Writer, d *actuate.Drift, fix bool) {
	fmt.Fprintf(w, "carrier %s: %d cards compared\n", d.Carrier, d.Compared)
	kinds := make([]string, 0, len(d.Cards))
	for k := range d.Cards {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	if len(kinds) == 0 {
		fmt.Fprintln(w, "no drift: the carrier agrees with cardmeter")
	}
	for _, k := range kinds {
		cards := d.Cards[k]
		shown := cards
		if len(shown) > 20 {
			shown = shown[:20]
		}
		more := ""
		if len(cards) > len(shown) {
			more = fmt.Sprintf(" and %d more (--json lists all)", len(cards)-len(shown))
		}
		fmt.Fprintf(w, "%-22s %6d  %s%s\n", k, len(cards), strings.Join(shown, " "), more)
	}
	if fix {
		fmt.Fprintf(w, "resyncs asked (the actuator sends them): %d, failed: %d\n", d.Sent, len(d.Failed))
		for _, f := range d.Failed {
			fmt.Fprintln(w, "  "+f)
		}
	}
}
