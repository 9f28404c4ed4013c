package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cardmeter/cardmeter/pkg/projector"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// The console in a real browser (headless Chromium): sign in with a token,
// see the fleet, find a card stopped over quota with its cause and have
// its resume refused, find a card stopped for arrears, pay in the API and
// resume it from the page, re-submit a rejected record, read the pipeline
// page, and, with an account's token, see that account only. Each page's
// screenshot goes to $CARDMETER_SCREENSHOTS (`make screenshots` writes
// docs/screenshots/, which the README shows), else to a temporary folder.
func TestConsoleInABrowser(t *testing.T) {
	chromium := testenv.Chromium(t)
	ch := testenv.ClickHouse(t)
	p, c := securedPipeline(t, func(cfg *Config) {
		cfg.Roles = []string{RoleAPI, RoleProjector, RoleClock, RoleSink}
		cfg.ClickHouse, cfg.Sink = ch, sinkConfigForTests()
		cfg.AnalystUser, cfg.AnalystPassword = "analyst", "analyst"
		cfg.Projector = projector.Config{CensusInterval: 200 * time.Millisecond}
		cfg.StatusEvery = 200 * time.Millisecond
		cfg.Tokens += ";acme " + tokAcctA + " read:account:a;acme-ops " + tokAcctAOp + " operator:account:a,read:account:a"
	})
	shots := os.Getenv("CARDMETER_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	capped, arrears, later := iccid(11), iccid(12), iccid(13)
	c.must(c.send("PUT", "/v1/plans/capped", tokBilling, "application/json", `{"quota_bytes": 1000000, "time_zone": "Asia/Shanghai"}`), 200)
	c.must(c.send("PUT", "/v1/plans/metered", tokBilling, "application/json", `{"quota_bytes": 1000000, "overage_fen_per_mb": 500}`), 200)
	c.must(c.send("PUT", "/v1/accounts/globex", tokBilling, "application/json", `{"credit_limit_fen": 1000000}`), 200)
	c.must(c.send("PUT", "/v1/accounts/a", tokBilling, "application/json", `{}`), 200)
	c.must(c.send("PUT", "/v1/cards/"+capped, tokBilling, "application/json",
		`{"account_id":"globex","plan_id":"capped","carrier":"cmcc","auto_stop_over_quota":true,"imsi":"460001000000011"}`), 200)
	c.must(c.send("PUT", "/v1/cards/"+arrears, tokBilling, "application/json",
		`{"account_id":"a","plan_id":"metered","carrier":"cmcc","msisdn":"8613800000012"}`), 200)
	record := func(id, card string, bytes int) string {
		return fmt.Sprintf(`{"record_id":%q,"iccid":%q,"start_time":"2026-03-10T10:00:00Z","end_time":"2026-03-10T11:00:00Z","bytes_up":0,"bytes_down":%d}`, id, card, bytes)
	}
	// r1 takes the capped card over its quota; r2 runs the metered card
	// 1 MB over, whose overage (5 yuan) puts account a in arrears; r3
	// to r5 name a card not provisioned yet and are rejected
	body := strings.Join([]string{record("r1", capped, 1_100_000), record("r2", arrears, 2_000_000),
		record("r3", later, 5000), record("r4", later, 5000), record("r5", later, 5000)}, "\n")
	if r := c.send("POST", "/v1/usage?wait=true", tokCMCC, "application/x-ndjson", body); r.code != 422 || r.body["accepted"] != 2.0 {
		t.Fatalf("usage: %d %s", r.code, r.raw)
	}

	ctx := browser(t, chromium)
	shot := func(name string) step {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644)
		})
	}
	run := func(what string, steps ...step) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			text, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
			t.Fatalf("%s: %v\nthe page says:\n%s", what, err, text)
		}
	}

	// signing in: a wrong token is told so; the admin's is taken
	run("sign-in page", chromedp.Navigate(p.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	run("a wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "not-a-token"), chromedp.Click(chromedp.CSS("#signin")),
		waitText("#signin-error", "not known"))
	run("sign in", chromedp.SetValue(chromedp.CSS("#token"), tokAdmin), chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#count-stopped")))

	// the fleet: three cards stopped (one over quota, account a's two in
	// arrears), one in service; the stops per hour once the sink has them
	run("fleet counts", reloadUntil("#count-stopped .n", "3"), is("#count-stopped .n", "3"), is("#count-in_service .n", "1"),
		waitText("#by-reason", "over_quota"), waitText("#by-reason", "arrears"), waitText("#warnings", "usage_100"))
	run("fleet chart", reloadUntil(`#stops-chart[data-total="3"] canvas`, ""), shot("fleet"))

	// find the capped card by its IMSI: stopped over quota, the cause a
	// link to the record; a resume is refused with the reason in words
	run("search by IMSI", chromedp.SetValue(chromedp.CSS("#search"), "460001000000011"), chromedp.Click(chromedp.CSS("#search-form button")),
		waitText("#iccid", capped), waitText("#reasons", "over its quota this cycle"),
		waitText("#timeline", "stopped: over its quota"), waitText("#timeline", "record cmcc/r1"))
	run("resume refused", chromedp.Click(chromedp.CSS("#resume")),
		waitText("#refusal", "Resume refused: the card (or its pool) is over quota: it resumes at the next cycle"))
	run("daily chart", reloadUntil("#daily-chart canvas", ""), waitText("#reasons", "over_quota"), shot("card-over-quota"))
	run("the cause", chromedp.Click(chromedp.CSS(`a.cause[href*="/record/"]`)), reloadUntil("#record", "1100000"), shot("record"))

	// find the metered card by its MSISDN: stopped for arrears; its
	// resume is refused until a payment, then taken from the page
	run("search by MSISDN", chromedp.SetValue(chromedp.CSS("#search"), "+86 138 0000 0012"), chromedp.Click(chromedp.CSS("#search-form button")),
		waitText("#iccid", arrears), waitText("#reasons", "the account is in arrears"))
	run("arrears resume refused", chromedp.Click(chromedp.CSS("#resume")),
		waitText("#refusal", "the account is in arrears: a payment must bring the balance to zero first"))
	c.must(c.send("POST", "/v1/accounts/a/payments", tokBilling, "application/json", `{"payment_id":"pay-1","amount_fen":1000}`), 200)
	run("resume after the payment", chromedp.Reload(), waitText("#iccid", arrears), chromedp.Click(chromedp.CSS("#resume")),
		waitText("#reasons", "In service"), waitText("#timeline", "resumed"), shot("card"))
	// the resume's cause is the command, which names who asked
	run("the command", chromedp.Click(chromedp.CSS(`#timeline li[data-type="cardmeter.card.resumed.v1"] a.cause`)),
		reloadUntil("#caused", "by admin"), waitText("#caused", "card.resumed"), chromedp.NavigateBack(), waitText("#iccid", arrears))

	// the account: its balance after the payment, the payment and the
	// charge from ClickHouse, its cards
	run("account", chromedp.Click(chromedp.CSS("#account-link")), is("#balance", "¥5.00"), waitText("#cards", arrears),
		reloadUntil("#ledger-table", "pay-1"), waitText("#ledger-table", "overage"), shot("account"))

	// the rejected record, re-submitted from the page once its card is there
	c.must(c.send("PUT", "/v1/cards/"+later, tokBilling, "application/json", `{"account_id":"globex","plan_id":"capped","carrier":"cmcc"}`), 200)
	// (r3 alone, then r4 selected, then all of the carrier's: r5)
	run("rejections", chromedp.Navigate(p.URL+"/#/rejections"), waitText("#rejection-summary", "cmcc"), waitText("#rejections", "r5"),
		shot("rejections"), chromedp.Click(chromedp.CSS("button.resubmit-one")), waitText("#resubmit-result", "1 accepted"))
	run("r3 gone", lacks("#rejections", "r3")) // pending only: r3 has gone
	run("re-submit selected", poll(`(() => {
			const row = [...document.querySelectorAll('#rejections tbody tr')].find(r => r.textContent.includes('r4'));
			if (!row) return false;
			row.querySelector('input[type=checkbox]').click();
			return true; })()`),
		chromedp.Click(chromedp.CSS("#resubmit-selected")), waitText("#resubmit-result", "1 accepted"),
		lacks("#rejections", "r4"))
	run("re-submit all", chromedp.Navigate(p.URL+"/#/rejections?carrier=cmcc"), waitText("#rejections", "r5"),
		chromedp.Click(chromedp.CSS("#resubmit-all")), waitText("#resubmit-result", "1 accepted"),
		waitText("#rejections", "no rejected records"))
	testenv.Eventually(t, 10*time.Second, func() error {
		if r := c.send("GET", "/v1/cards/"+later, tokRead, "", ""); r.code != 200 || r.body["cycle"].(map[string]any)["usage_bytes"] != 15000.0 {
			return fmt.Errorf("the re-submitted record is not counted: %s", r.raw)
		}
		return nil
	})

	// the pipeline: each partition, its owner and lag; the sink's backlog
	run("pipeline", chromedp.Navigate(p.URL+"/#/pipeline"), waitText("#partitions", "ready"), waitCount("#partitions tbody tr", 2),
		waitText("main", "ClickHouse"), shot("pipeline"))

	// an account's token: its account and cards only, no fleet
	run("sign out", chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#token")))
	run("account token", chromedp.SetValue(chromedp.CSS("#token"), tokAcctAOp), chromedp.Click(chromedp.CSS("#signin")),
		waitText("h1", "Account a"), waitText("#nav", "Account a"))
	nav, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#nav")))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(nav, "Fleet") || strings.Contains(nav, "Pipeline") {
		t.Fatalf("an account's token is offered the fleet: %q", nav)
	}
	run("another account's card", chromedp.Navigate(p.URL+"/#/card/"+capped), waitText("main", "no such card"))
}

// browser starts headless Chromium for a test.
func browser(t *testing.T, path string) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true), chromedp.WindowSize(1280, 900))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// step is one browser action of a test.
type step = chromedp.Action[chromedp.Void]

// poll waits until the expression is true.
func poll(expr string) step {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond))(ctx, tg)
		return err
	})
}

// holds is a script: the first element sel matches holds text.
func holds(sel, text string) string {
	return fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.includes(%q); })()`, sel, text)
}

// waitText waits until the first element sel matches holds text.
func waitText(sel, text string) step { return poll(holds(sel, text)) }

// is waits until the first element sel matches holds exactly text.
func is(sel, text string) step {
	return poll(fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.trim() === %q; })()`, sel, text))
}

// lacks waits until the first element sel matches is there without text.
func lacks(sel, text string) step {
	return poll(fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && !e.textContent.includes(%q); })()`, sel, text))
}

// waitCount waits until sel matches n elements.
func waitCount(sel string, n int) step {
	return poll(fmt.Sprintf(`document.querySelectorAll(%q).length === %d`, sel, n))
}

// reloadUntil reloads the page until sel holds text: for what the sink
// writes to ClickHouse some moments after the fold.
func reloadUntil(sel, text string) step {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		for {
			// the page renders after its reads: give them a moment
			_, _ = chromedp.Poll[bool](holds(sel, text), chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(2*time.Second))(ctx, tg)
			found, err := chromedp.Evaluate[bool](holds(sel, text))(ctx, tg)
			if err == nil && found {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s never held %q: %w", sel, text, ctx.Err())
			case <-time.After(time.Second):
			}
			if _, err := chromedp.Reload()(ctx, tg); err != nil {
				return err
			}
		}
	})
}
