package webhook_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/testenv"
	"github.com/cardmeter/cardmeter/pkg/webhook"
)

// The notifier as a process (services/notifier), killed with SIGKILL while
// a delivery is in flight at the endpoint: started again on the same
// instance name, it delivers that event again under the same webhook-id,
// then every other, each card's in order, and none is lost.
func TestNotifierKilledMidDeliveryLosesNone(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a process")
	}
	nc, js := testenv.JetStream(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "notifier")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/cardmeter/cardmeter/services/notifier").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	rcv := newReceiver(t)
	inFlight := make(chan struct{}) // closed when the victim's first delivery hangs at the endpoint
	release := make(chan struct{})  // closed once the process is dead
	var once sync.Once
	rcv.fail = func(id string, n int) (int, string, bool) {
		if id == "ev-3-2" && n == 1 {
			once.Do(func() { close(inFlight) })
			<-release // held until the process is dead
			return http.StatusServiceUnavailable, "", false
		}
		return 0, "", false
	}
	rcv.secret = subscribe(t, js, webhook.Subscription{ID: "crm", URL: rcv.srv.URL,
		EventTypes: []string{"cardmeter.card.stopped.v1", "cardmeter.card.resumed.v1"}, Parallel: 4})
	want := publishEvents(t, js, 8, 6)

	start := func(run int) *exec.Cmd {
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("notifier-%d.log", run)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { log.Close() })
		cmd := exec.Command(bin, "--nats-url", nc.ConnectedUrl(), "--instance", "notifier-a", "--data-dir", dir,
			"--http-addr", "127.0.0.1:0", "--webhook-allow-private", "--webhook-timeout", "2m")
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	showLogs := func() {
		for _, f := range []string{"notifier-1.log", "notifier-2.log"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
				t.Logf("%s (last 3000 bytes):\n%s", f, b[max(0, len(b)-3000):])
			}
		}
	}

	victim := start(1)
	select {
	case <-inFlight:
	case <-time.After(60 * time.Second):
		showLogs()
		t.Fatal("the notifier never delivered ev-3-2")
	}
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	close(release)
	rcv.mu.Lock()
	before := len(dedupe(rcv.got["89860000000000000003"]))
	rcv.mu.Unlock()
	if before != 2 {
		t.Fatalf("card 3 had %d events taken before the kill, want 2 (ev-3-2 was in flight)", before)
	}

	start(2)
	testenv.Eventually(t, 90*time.Second, func() error {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for card, ids := range want {
			if got := dedupe(rcv.got[card]); fmt.Sprint(got) != fmt.Sprint(ids) {
				return fmt.Errorf("card %s got %v, want %v", card, rcv.got[card], ids)
			}
		}
		if rcv.seen["ev-3-2"] < 2 {
			return fmt.Errorf("ev-3-2 seen %d times", rcv.seen["ev-3-2"])
		}
		return nil
	})
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.bad != 0 {
		t.Fatalf("%d deliveries did not verify", rcv.bad)
	}
	if t.Failed() {
		showLogs()
	}
}
