package app

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/cli"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// `cardmeter card` and `cardmeter account` against a running API: a card
// over quota shows stopped with its reason in words and its cause in the
// history; a resume is refused with the reason in words (exit 5); a stop
// and a resume by an operator go through; an unknown card is exit 4; and
// `cardmeter status` says what no role reports (here: no sink), exit 6.
func TestCardCommands(t *testing.T) {
	p, err := Start(context.Background(), Config{Roles: []string{RoleAPI, RoleProjector, RoleClock}, DataDir: t.TempDir(), NATSPort: -1,
		HTTPAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC),
		StatusEvery: 200 * time.Millisecond}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	testenv.Eventually(t, 20*time.Second, p.Projector.Ready)
	c := &client{t: t, base: p.URL}
	c.putJSON("/v1/plans/iot", map[string]any{"quota_bytes": 1_000_000, "time_zone": "UTC"})
	c.putStored("/v1/cards/"+iccid(1), map[string]any{"account_id": "acme", "plan_id": "iot", "carrier": "cmcc", "auto_stop_over_quota": true})
	c.putStored("/v1/cards/"+iccid(2), map[string]any{"account_id": "acme", "plan_id": "iot", "carrier": "cmcc"})
	nd := fmt.Sprintf(`{"record_id":"r1","iccid":"%s","start_time":"2026-01-10T10:00:00Z","end_time":"2026-01-10T11:00:00Z","bytes_up":100000,"bytes_down":1000000}`, iccid(1))
	var res struct{ Position uint64 }
	if code := c.do("POST", "/v1/usage?carrier=cmcc", "application/x-ndjson", []byte(nd), &res); code != 200 {
		t.Fatalf("usage: %d", code)
	}
	c.card(iccid(1), res.Position) // folded

	run := func(f func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := f(append(args, "--url", p.URL), &out, &errb)
		return code, out.String(), errb.String()
	}
	card := func(args []string, o, e *bytes.Buffer) int { return cli.Card(args, o, e) }
	account := func(args []string, o, e *bytes.Buffer) int { return cli.Account(args, o, e) }

	code, out, _ := run(card, "show", iccid(1))
	if code != cli.ExitOK || !strings.Contains(out, "stopped (over_quota: over its data quota this cycle)") || !strings.Contains(out, "1.10 MB of 1.00 MB") {
		t.Fatalf("card show: exit %d\n%s", code, out)
	}
	code, out, _ = run(card, "events", iccid(1))
	if code != cli.ExitOK || !strings.Contains(out, "card.stopped.v1") || !strings.Contains(out, "over_quota: over its data quota") ||
		!strings.Contains(out, "(cause record:cmcc/r1)") {
		t.Fatalf("card events: exit %d\n%s", code, out)
	}
	code, _, errOut := run(card, "resume", iccid(1), "--operator", "ops")
	if code != cli.ExitRefused || !strings.Contains(errOut, "refused: the card (or its pool) is over quota: it resumes at the next cycle") {
		t.Fatalf("a refused resume: exit %d: %s", code, errOut)
	}
	if code, out, _ = run(card, "events", iccid(1)); code != cli.ExitOK || !strings.Contains(out, "card.command_refused.v1") ||
		!strings.Contains(out, "the card (or its pool) is over quota: it resumes at the next cycle") {
		t.Fatalf("the refusal in the history, in words: exit %d\n%s", code, out)
	}
	if code, out, _ = run(card, "stop", iccid(2), "--operator", "ops", "--note", "parked"); code != cli.ExitOK || !strings.Contains(out, "manual: stopped by an operator") {
		t.Fatalf("card stop: exit %d\n%s", code, out)
	}
	if code, out, _ = run(card, "resume", iccid(2), "--operator", "ops"); code != cli.ExitOK || !strings.Contains(out, "status   in_service") {
		t.Fatalf("card resume: exit %d\n%s", code, out)
	}
	if code, out, _ = run(account, "show", "acme"); code != cli.ExitOK || !strings.Contains(out, "1 in service, 1 stopped, 0 cancelled") {
		t.Fatalf("account show: exit %d\n%s", code, out)
	}
	if code, _, errOut = run(card, "show", "89860000000000000000"); code != cli.ExitNotFound {
		t.Fatalf("an unknown card: exit %d: %s", code, errOut)
	}
	if code, _, _ = run(card, "explode", iccid(1)); code != cli.ExitUsage {
		t.Fatalf("an unknown verb: exit %d", code)
	}
	// no sink runs here: the status says so, and the partitions are held
	status := func(args []string, o, e *bytes.Buffer) int { return cli.Status(args, o, e) }
	testenv.Eventually(t, 10*time.Second, func() error {
		code, out, _ := run(status)
		if code != cli.ExitUnhealthy || !strings.Contains(out, "problem       no sink is reporting") || !strings.Contains(out, "sink          unknown: none reporting") ||
			!strings.Contains(out, "partition 0   ready") || !strings.Contains(out, "partition 1   ready") || !strings.Contains(out, "ingest        0 records/s") {
			return fmt.Errorf("status: exit %d\n%s", code, out)
		}
		return nil
	})
}
