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

// Exit code of reconcile: drift found (and, with --fix, sent).
const ExitDrift = 4

// Reconcile is `cardmeter reconcile --carrier X`: it lists the carrier's
// cards through its driver (--actuator-config) and cardmeter's through the
// API, reports how they differ, and with --fix sends each drifted card the
// action that makes the carrier agree.
func Reconcile(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apiURL := fs.String("url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL); the token (scope read) from CARDMETER_TOKEN")
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
	d, err := actuate.Reconcile(ctx, *carrier, drv, apiCards(strings.TrimSuffix(*apiURL, "/"), os.Getenv("CARDMETER_TOKEN")), *fix, time.Now())
	if err != nil {
		fmt.Fprintln(stderr, "reconcile:", err)
		return ExitFailed
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
	case len(d.Cards[actuate.DriftActiveAtCarrier])+len(d.Cards[actuate.DriftInactiveAtCarrier])+len(d.Cards[actuate.DriftMissingAtCarrier])+len(d.Cards[actuate.DriftUnknownToCardmeter]) > 0:
		return ExitDrift
	}
	return ExitOK
}

// apiCards pages GET /v1/cards.
func apiCards(base, token string) func(ctx context.Context, cursor string) ([]actuate.CardmeterCard, string, error) {
	c := &http.Client{Timeout: time.Minute}
	return func(ctx context.Context, cursor string) ([]actuate.CardmeterCard, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/cards?limit=1000&cursor="+url.QueryEscape(cursor), nil)
		if err != nil {
			return nil, "", err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
			return nil, "", fmt.Errorf("GET /v1/cards: %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
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
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			return nil, "", err
		}
		out := make([]actuate.CardmeterCard, 0, len(page.Cards))
		for _, c := range page.Cards {
			out = append(out, actuate.CardmeterCard{ICCID: c.ICCID, AccountID: c.AccountID, Carrier: c.Carrier, Status: c.Status, Reasons: c.StopReasons})
		}
		return out, page.NextCursor, nil
	}
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
		fmt.Fprintf(w, "actions sent: %d, failed: %d\n", d.Sent, len(d.Failed))
		for _, f := range d.Failed {
			fmt.Fprintln(w, "  "+f)
		}
	}
}
