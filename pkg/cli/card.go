package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/event"
)

// Exit codes of card and account, besides ExitOK, ExitFailed (the API did
// not answer, or answered an error) and ExitUsage.
const (
	ExitNotFound = 4 // no such card or account (for this token)
	ExitRefused  = 5 // the command was refused: the reason is printed
)

const cardUsage = `usage: cardmeter card show ICCID [--json]
       cardmeter card events ICCID [--json]
       cardmeter card stop|resume ICCID --operator NAME [--note TEXT] [--json]
       cardmeter card rebind ICCID --imei IMEI --operator NAME [--note TEXT] [--json]
       cardmeter account show ID [--json]

The API's URL from --url or CARDMETER_URL, the token from CARDMETER_TOKEN.
Exit: 0 done, 1 failed, 2 usage, 4 no such card or account, 5 refused (the
reason is printed).
`

// client is a small API client for the commands that read and act.
type client struct {
	base, token string
	http        *http.Client
}

// apiError is an answer other than 2xx: its problem, in words.
type apiError struct {
	status int
	p      api.Problem
}

func (e *apiError) Error() string {
	if e.p.Detail != "" {
		return e.p.Detail
	}
	return fmt.Sprintf("HTTP %d %s", e.status, e.p.Title)
}

func (c *client) do(method, path string, body, out any) error {
	_, err := c.doStatus(context.Background(), method, path, "", body, out)
	return err
}

// doStatus is do within ctx, with an Idempotency-Key when key is set, and
// the answer's status code.
func (c *client) doStatus(ctx context.Context, method, path, key string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{status: resp.StatusCode}
		_ = json.Unmarshal(b, &e.p)
		return resp.StatusCode, e
	}
	if resp.StatusCode == http.StatusAccepted {
		// decided, but not what out describes (a later command followed)
		var d struct {
			Detail string `json:"detail"`
		}
		_ = json.Unmarshal(b, &d)
		return resp.StatusCode, &decidedLater{d.Detail}
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(b, out)
	}
	return resp.StatusCode, nil
}

// decidedLater is a 202: the command was decided, and another for the
// card was decided after it.
type decidedLater struct{ detail string }

func (d *decidedLater) Error() string { return d.detail }

// exitFor is the exit code of a failed request, printed in words.
func exitFor(err error, stderr io.Writer) int {
	var ae *apiError
	var later *decidedLater
	switch {
	case errors.As(err, &later):
		fmt.Fprintln(stderr, "done, and another command for the card followed:", later.detail)
		return ExitOK
	case errors.As(err, &ae) && ae.status == http.StatusNotFound:
		fmt.Fprintln(stderr, "not found:", ae.Error())
		return ExitNotFound
	case errors.As(err, &ae) && ae.status == http.StatusConflict:
		fmt.Fprintln(stderr, "refused:", ae.Error())
		return ExitRefused
	}
	fmt.Fprintln(stderr, "failed:", err)
	return ExitFailed
}

// Card is `cardmeter card show|events|stop|resume ICCID` and `cardmeter
// account show ID` (account is passed as the first argument).
func Card(args []string, stdout, stderr io.Writer) int {
	return cardOrAccount("card", args, stdout, stderr)
}

// Account is `cardmeter account show ID`.
func Account(args []string, stdout, stderr io.Writer) int {
	return cardOrAccount("account", args, stdout, stderr)
}

func cardOrAccount(noun string, args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, cardUsage)
		return ExitUsage
	}
	verb := args[0]
	switch {
	case noun == "card" && (verb == "show" || verb == "events" || verb == "stop" || verb == "resume" || verb == "rebind"):
	case noun == "account" && verb == "show":
	default:
		fmt.Fprint(stderr, cardUsage)
		return ExitUsage
	}
	fs := flag.NewFlagSet(noun+" "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", getenv("CARDMETER_URL", "http://127.0.0.1:8080"), "the API's base URL (CARDMETER_URL)")
	asJSON := fs.Bool("json", false, "the API's answer as JSON")
	operator := fs.String("operator", os.Getenv("USER"), "stop, resume: who asks (recorded in the card's history)")
	note := fs.String("note", "", "stop, resume, rebind: why")
	imei := fs.String("imei", "", "rebind: the device's IMEI (15 digits)")
	// the id may come before or after the flags
	rest := args[1:]
	var id string
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		id, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return ExitUsage
	}
	if id == "" && fs.NArg() > 0 {
		id = fs.Arg(0)
	}
	if id == "" {
		fmt.Fprint(stderr, cardUsage)
		return ExitUsage
	}
	c := &client{base: strings.TrimSuffix(*base, "/"), token: os.Getenv("CARDMETER_TOKEN"), http: &http.Client{Timeout: time.Minute}}
	printJSON := func(v any) {
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Fprintln(stdout, string(b))
	}
	switch {
	case noun == "account":
		var a api.AccountResponse
		if err := c.do("GET", "/v1/accounts/"+url.PathEscape(id), nil, &a); err != nil {
			return exitFor(err, stderr)
		}
		if *asJSON {
			printJSON(a)
		} else {
			printAccount(stdout, &a)
		}
	case verb == "show":
		var v api.CardResponse
		if err := c.do("GET", "/v1/cards/"+url.PathEscape(id), nil, &v); err != nil {
			return exitFor(err, stderr)
		}
		if *asJSON {
			printJSON(v)
		} else {
			printCard(stdout, &v)
		}
	case verb == "events":
		var h struct {
			Events []event.Envelope `json:"events"`
		}
		if err := c.do("GET", "/v1/cards/"+url.PathEscape(id)+"/events", nil, &h); err != nil {
			return exitFor(err, stderr)
		}
		if *asJSON {
			printJSON(h)
		} else {
			for i := range h.Events {
				fmt.Fprintln(stdout, EventLine(&h.Events[i]))
			}
		}
	default: // stop, resume, rebind
		if strings.TrimSpace(*operator) == "" {
			fmt.Fprintln(stderr, "--operator: who asks is recorded")
			return ExitUsage
		}
		body := map[string]string{"operator": *operator, "note": *note}
		if verb == "rebind" {
			if *imei == "" {
				fmt.Fprintln(stderr, "--imei: the device to bind the card to")
				return ExitUsage
			}
			body["imei"] = *imei
		}
		var v api.CardResponse
		if err := c.do("POST", "/v1/cards/"+url.PathEscape(id)+"/"+verb, body, &v); err != nil {
			return exitFor(err, stderr)
		}
		if *asJSON {
			printJSON(v)
		} else {
			printCard(stdout, &v)
		}
	}
	return ExitOK
}

// ReasonWords says a stop reason in words.
func ReasonWords(r string) string {
	switch r {
	case "manual":
		return "stopped by an operator"
	case "over_quota":
		return "over its data quota this cycle"
	case "arrears":
		return "its account is in arrears"
	case "expiry":
		return "its plan has expired"
	case "pool":
		return "its data pool is used up"
	case "device_mismatch":
		return "used in another device than its own"
	case "anomaly":
		return "a day of usage far above its usual"
	}
	return r
}

func printCard(w io.Writer, v *api.CardResponse) {
	status := string(v.Status)
	if len(v.StopReasons) > 0 {
		words := make([]string, 0, len(v.StopReasons))
		for _, r := range v.StopReasons {
			words = append(words, r+": "+ReasonWords(r))
		}
		status += " (" + strings.Join(words, "; ") + ")"
	}
	fmt.Fprintf(w, "card     %s\nstatus   %s\n", v.ICCID, status)
	fmt.Fprintf(w, "account  %s   plan %s   carrier %s\n", v.AccountID, v.PlanID, v.Carrier)
	used := ""
	if v.Cycle.QuotaBytes > 0 {
		used = fmt.Sprintf(" (%.1f%%)", 100*float64(v.Cycle.UsageBytes)/float64(v.Cycle.QuotaBytes))
	}
	fmt.Fprintf(w, "cycle    %s to %s: %s of %s%s\n", v.Cycle.Start, v.Cycle.End, bytesWords(v.Cycle.UsageBytes), bytesWords(v.Cycle.QuotaBytes), used)
	if v.ValidUntil != "" {
		fmt.Fprintf(w, "valid    until %s\n", v.ValidUntil)
	}
	if d := v.Device; d.IMEI != "" || d.LastIMEI != "" {
		line := "not bound"
		if d.IMEI != "" {
			line = "bound to " + d.IMEI
		}
		if d.LastIMEI != "" && d.LastIMEI != d.IMEI {
			line += ", last seen in " + d.LastIMEI
		}
		fmt.Fprintf(w, "device   %s\n", line)
	}
	if len(v.ActiveWarnings) > 0 {
		fmt.Fprintf(w, "warnings %s\n", strings.Join(v.ActiveWarnings, ", "))
	}
	if a := v.Account; a != nil {
		arrears := ""
		if a.InArrears {
			arrears = "   IN ARREARS"
		}
		fmt.Fprintf(w, "balance  %s (credit limit %s)%s\n", fenWords(a.BalanceFen), fenWords(a.CreditLimitFen), arrears)
	}
}

func printAccount(w io.Writer, a *api.AccountResponse) {
	arrears := ""
	if a.InArrears {
		arrears = "   IN ARREARS"
	}
	fmt.Fprintf(w, "account  %s\nbalance  %s (credit limit %s, low-balance warning under %s)%s\n", a.AccountID,
		fenWords(a.BalanceFen), fenWords(a.CreditLimitFen), fenWords(a.LowBalanceFen), arrears)
	fmt.Fprintf(w, "cards    %d in service, %d stopped, %d cancelled\n", a.Cards["in_service"], a.Cards["stopped"], a.Cards["cancelled"])
	if len(a.ActiveWarnings) > 0 {
		fmt.Fprintf(w, "warnings %s\n", strings.Join(a.ActiveWarnings, ", "))
	}
}

// EventLine is an event in one line: when, what, why.
func EventLine(e *event.Envelope) string {
	what := strings.TrimPrefix(e.Type, "cardmeter.")
	var extra []string
	if e.Data.Reason != "" {
		extra = append(extra, e.Data.Reason+": "+ReasonWords(e.Data.Reason))
	}
	code := e.Data.Code
	if code != "" && strings.HasSuffix(e.Type, ".command_refused.v1") {
		code = api.RefusalDetail(code) // in words
	}
	for _, s := range []string{e.Data.Warning, e.Data.Action, code, e.Data.Detail} {
		if s != "" {
			extra = append(extra, s)
		}
	}
	if e.Data.Operator != "" {
		extra = append(extra, "by "+e.Data.Operator)
	}
	line := fmt.Sprintf("%s  %-32s %s", e.Time, what, e.Subject)
	if len(extra) > 0 {
		line += "  " + strings.Join(extra, "; ")
	}
	return line + "  (cause " + e.Data.Cause + ")"
}

func bytesWords(b uint64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(b)/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.2f MB", float64(b)/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(b)/1e3)
	}
	return fmt.Sprintf("%d B", b)
}

func fenWords(f int64) string { return fmt.Sprintf("¥%.2f", float64(f)/100) }
