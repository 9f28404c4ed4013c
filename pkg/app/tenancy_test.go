package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/testenv"
)

const (
	tokAcctA   = "test-account-a-reader-0123456789"
	tokAcctAOp = "test-account-a-operator-0123456789"
)

// An account's tokens (read:account:a, operator:account:a) see and act on
// account a's cards, events and rejections only; everything else is not
// there for them (404, as for what does not exist, never 403), in every
// read, list and history.
func TestAccountTokensSeeTheirAccountOnly(t *testing.T) {
	_, c := securedPipeline(t, func(cfg *Config) {
		cfg.Tokens += ";acme " + tokAcctA + " read:account:a;acme-ops " + tokAcctAOp + " operator:account:a,read:account:a"
	})
	// card 1 is account a's (cmcc), card 2 account b's (cucc); one usage
	// record each, one rejected record of card 1, one of an unknown card
	c.must(c.send("POST", "/v1/usage", tokCUCC, "text/csv", csvOf(row("b1", iccid(2), "", 5))), 200)
	u := c.must(c.send("POST", "/v1/usage", tokCMCC, "text/csv", csvOf(row("a1", iccid(1), "", 5),
		fmt.Sprintf("a2,%s,,2026-03-10T10:30:00Z,2026-03-10T10:00:00Z,0,1", iccid(1)), row("x1", iccid(77), "", 1))), 422)
	pos := fmt.Sprintf("%.0f", u.body["position"].(float64))

	for _, path := range []string{"/v1/cards/" + iccid(1) + "?min_position=" + pos, "/v1/cards/" + iccid(1) + "/events", "/v1/accounts/a"} {
		c.must(c.send("GET", path, tokAcctA, "", ""), 200)
	}
	// another account's, and what is not an account's, reads as nothing
	for _, path := range []string{"/v1/cards/" + iccid(2), "/v1/cards/" + iccid(2) + "?min_position=" + pos, "/v1/cards/" + iccid(2) + "/events",
		"/v1/accounts/b", "/v1/plans/p", "/v1/clock", "/v1/cards/" + iccid(99)} {
		if r := c.send("GET", path, tokAcctA, "", ""); r.code != 404 {
			t.Errorf("GET %s with account a's token: %d %s", path, r.code, r.raw)
		}
	}
	// an unknown card and another account's card read alike
	other := c.send("GET", "/v1/cards/"+iccid(2), tokAcctA, "", "")
	missing := c.send("GET", "/v1/cards/"+iccid(99), tokAcctA, "", "")
	if other.body["type"] != missing.body["type"] || other.body["title"] != missing.body["title"] {
		t.Errorf("another account's card %s, an unknown card %s", other.raw, missing.raw)
	}
	list := c.must(c.send("GET", "/v1/cards", tokAcctA, "", ""), 200)
	if cards := list.body["cards"].([]any); len(cards) != 1 || cards[0].(map[string]any)["iccid"] != iccid(1) {
		t.Errorf("list with account a's token: %s", list.raw)
	}
	if l := c.must(c.send("GET", "/v1/cards?account_id=b", tokAcctA, "", ""), 200); len(l.body["cards"].([]any)) != 0 {
		t.Errorf("list of account b with account a's token: %s", l.raw)
	}
	if l := c.must(c.send("GET", "/v1/cards", tokRead, "", ""), 200); len(l.body["cards"].([]any)) != 2 {
		t.Errorf("list with the reader's token: %s", l.raw)
	}
	rej := c.must(c.send("GET", "/v1/rejections", tokAcctA, "", ""), 200).body["rejections"].([]any)
	if len(rej) != 1 || rej[0].(map[string]any)["record"].(map[string]any)["record_id"] != "a2" {
		t.Errorf("rejections with account a's token: %v", rej)
	}
	if all := c.must(c.send("GET", "/v1/rejections", tokRead, "", ""), 200).body["rejections"].([]any); len(all) != 2 {
		t.Errorf("rejections with the reader's token: %d, want 2 (a2 and the unknown card's)", len(all))
	}

	// acting: the operator of account a stops its card, not another's; a
	// reader of account a is no operator at all
	stop := `{"operator":"acme-noc","note":"lost"}`
	if r := c.send("POST", "/v1/cards/"+iccid(2)+"/stop", tokAcctAOp, "application/json", stop); r.code != 404 {
		t.Errorf("stopping account b's card with account a's operator: %d %s", r.code, r.raw)
	}
	if r := c.send("POST", "/v1/cards/"+iccid(1)+"/stop", tokAcctA, "application/json", stop); r.code != 403 {
		t.Errorf("stopping with a reader's token: %d %s", r.code, r.raw)
	}
	c.must(c.send("POST", "/v1/cards/"+iccid(1)+"/stop", tokAcctAOp, "application/json", stop), 200)
	if h := c.must(c.send("GET", "/v1/cards/"+iccid(1)+"/events", tokAcctA, "", ""), 200); !strings.Contains(string(h.raw), `acme-ops: acme-noc`) {
		t.Errorf("an account operator's stop does not name the token: %s", h.raw)
	}
	// and writes other than its own stop and resume are not there for it
	for _, w := range [][2]string{{"PUT", "/v1/plans/q"}, {"POST", "/v1/accounts/a/payments"}, {"POST", "/v1/usage"}} {
		if r := c.send(w[0], w[1], tokAcctAOp, "application/json", "{}"); r.code != 403 {
			t.Errorf("%s %s with account a's operator: %d %s", w[0], w[1], r.code, r.raw)
		}
	}

	// every write is audited, with who and what came of it; account
	// tokens cannot read the audit
	if r := c.send("GET", "/v1/audit", tokAcctAOp, "", ""); r.code != 403 {
		t.Errorf("the audit with account a's operator: %d", r.code)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		a := c.must(c.send("GET", "/v1/audit?who=acme-ops", tokAdmin, "", ""), 200)
		var got []string
		for _, e := range a.body["entries"].([]any) {
			m := e.(map[string]any)
			got = append(got, fmt.Sprintf("%s %s %v %s", m["method"], m["path"], m["status"], m["decision"]))
		}
		want := []string{
			"POST /v1/cards/" + iccid(2) + "/stop 404 cardmeter:not-found/card",
			"POST /v1/cards/" + iccid(1) + "/stop 200 applied",
			"PUT /v1/plans/q 403 cardmeter:auth/forbidden",
			"POST /v1/accounts/a/payments 403 cardmeter:auth/forbidden",
			"POST /v1/usage 403 cardmeter:auth/forbidden",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			return fmt.Errorf("audit of acme-ops:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		return nil
	})
	// search by each number; an account's token finds its account's only
	if r := c.must(c.send("GET", "/v1/search?q=460001000000001", tokRead, "", ""), 200); fmt.Sprint(r.body["matches"]) !=
		fmt.Sprintf("[map[account_id:a carrier:cmcc iccid:%s matched:imsi]]", iccid(1)) {
		t.Fatalf("search by IMSI: %s", r.raw)
	}
	if r := c.must(c.send("GET", "/v1/search?q="+iccid(1), tokAcctA, "", ""), 200); len(r.body["matches"].([]any)) != 1 {
		t.Fatalf("search by ICCID, account a's token: %s", r.raw)
	}
	if r := c.must(c.send("GET", "/v1/search?q="+iccid(2), tokAcctA, "", ""), 200); len(r.body["matches"].([]any)) != 0 {
		t.Fatalf("account a's token found account b's card: %s", r.raw)
	}
	if r := c.send("GET", "/v1/search?q=", tokRead, "", ""); r.code != 400 || r.body["field"] != "q" {
		t.Fatalf("an empty search: %d %s", r.code, r.raw)
	}
}

// Tokens reload from their file when it changes and on SIGHUP, without a
// restart: a removed token is refused from then on, an added one works,
// and a file that does not parse keeps the tokens in force.
func TestTokensReloadWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	write := func(text string) {
		t.Helper()
		// as editors and secret mounts do: a new file renamed over the old
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.ReplaceAll(testTokens, ";", "\n") + "\n"
	write(lines + "acme " + tokAcctA + " read:account:a\n")
	_, c := securedPipeline(t, func(cfg *Config) { cfg.Tokens, cfg.TokensFile = "", file })
	status := func(tok string) func() error {
		return func() error {
			if r := c.send("GET", "/v1/accounts/a", tok, "", ""); r.code != 200 {
				return fmt.Errorf("%d", r.code)
			}
			return nil
		}
	}
	refused := func(tok string) func() error {
		return func() error {
			if r := c.send("GET", "/v1/accounts/a", tok, "", ""); r.code != 401 {
				return fmt.Errorf("still %d", r.code)
			}
			return nil
		}
	}
	testenv.Eventually(t, 5*time.Second, status(tokAcctA))
	write(lines) // acme removed
	testenv.Eventually(t, 5*time.Second, refused(tokAcctA))
	write("this is not a tokens file\n")
	time.Sleep(300 * time.Millisecond)
	if err := status(tokRead)(); err != nil {
		t.Fatalf("a broken tokens file replaced the tokens in force: %v", err)
	}
	// a change the watcher does not see (written in place, then signalled)
	if err := os.WriteFile(file, []byte(lines+"acme2 "+tokAcctAOp+" read:account:a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, status(tokAcctAOp))
}
