package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// metric reads one unlabelled metric from a /metrics page.
func metric(t *testing.T, base, name string) (float64, error) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no %s at %s", name, base)
}

// A projector paused (SIGSTOP) past its leases loses its partitions to the
// other instance, which folds what came meanwhile; resumed, the paused one
// publishes nothing and stores no checkpoint before it learns it lost
// them, then takes its share again, and every record is counted once.
func TestPausedProjectorPublishesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two processes")
	}
	ctx := context.Background()
	dir := t.TempDir()
	bin, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	projBin := filepath.Join(dir, "projector")
	if out, err := exec.Command("go", "build", "-o", projBin, "github.com/cardmeter/cardmeter/services/projector").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ports, err := freePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	ch := testenv.ClickHouse(t)
	admin := broker.NewPassword()
	apiURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	bURL := fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	a := &node{bin: bin, logPath: filepath.Join(dir, "a.log"), log: testenv.Logger(t), args: []string{"run",
		"--data-dir", filepath.Join(dir, "a"), "--http-addr", "127.0.0.1:" + strconv.Itoa(ports[1]), "--nats-port", strconv.Itoa(ports[0]),
		"--clickhouse-addr", ch.Addr, "--clickhouse-db", ch.Database, "--partitions", "4", "--lease-ttl", "3s",
		"--clock", "manual", "--clock-start", "2026-06-20T12:00:00Z"},
		env: []string{"CARDMETER_NATS_ADMIN_PASSWORD=" + admin}}
	b := &node{bin: projBin, logPath: filepath.Join(dir, "b.log"), log: testenv.Logger(t), args: []string{
		"--data-dir", filepath.Join(dir, "b"), "--health-addr", "127.0.0.1:" + strconv.Itoa(ports[2]),
		"--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", ports[0]), "--wait-for-topology"},
		env: []string{"CARDMETER_NATS_USER=" + broker.UserAdmin, "CARDMETER_NATS_PASSWORD=" + admin}}
	for _, n := range []*node{a, b} {
		n := n
		if err := n.start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if n.running() {
				_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGCONT)
				_ = n.cmd.Process.Kill()
				<-n.done
			}
		})
		if n == a {
			testenv.Eventually(t, 60*time.Second, func() error { return ready(apiURL) })
		}
	}
	held := func(base string) (int, error) {
		v, err := metric(t, base, "cardmeter_projector_partitions_held")
		return int(v), err
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		ha, err := held(apiURL)
		if err != nil {
			return err
		}
		hb, err := held(bURL)
		if err != nil {
			return err
		}
		if ha != 2 || hb != 2 {
			return fmt.Errorf("a holds %d partitions, b %d: want two each", ha, hb)
		}
		return ready(bURL)
	})

	put(t, apiURL+"/v1/plans/p", `{"quota_bytes": 1000000000, "cycle_anchor_day": 1, "time_zone": "UTC"}`)
	const cards = 16
	ids := make([]string, cards)
	for i := range ids {
		p := fmt.Sprintf("898600%013d", 900+i)
		ids[i] = p + string(cdr.LuhnDigit(p))
		put(t, apiURL+"/v1/cards/"+ids[i], fmt.Sprintf(`{"account_id": "acct%d", "plan_id": "p", "carrier": "cmcc"}`, i%8))
	}
	var want uint64
	round := func(r int) uint64 {
		var body bytes.Buffer
		for i, id := range ids {
			fmt.Fprintf(&body, `{"record_id":"r%d-%d","iccid":"%s","start_time":"2026-06-20T10:00:00Z","end_time":"2026-06-20T10:01:00Z","bytes_up":100,"bytes_down":0}`+"\n", r, i, id)
		}
		resp, err := http.Post(apiURL+"/v1/usage?carrier=cmcc&wait=false", "application/x-ndjson", &body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res struct {
			Stored   int    `json:"stored"`
			Position uint64 `json:"position"`
		}
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &res); err != nil || resp.StatusCode != 200 || res.Stored != cards {
			t.Fatalf("round %d: %d %s", r, resp.StatusCode, b)
		}
		want += 100
		return res.Position
	}
	counted := func(pos uint64) error {
		for _, id := range ids {
			resp, err := http.Get(fmt.Sprintf("%s/v1/cards/%s?min_position=%d", apiURL, id, pos))
			if err != nil {
				return err
			}
			var c struct {
				Cycle struct {
					UsageBytes uint64 `json:"usage_bytes"`
				} `json:"cycle"`
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || json.Unmarshal(b, &c) != nil {
				return fmt.Errorf("card %s: %d %s", id, resp.StatusCode, b)
			}
			if c.Cycle.UsageBytes != want {
				return fmt.Errorf("card %s: %d bytes counted, %d sent", id, c.Cycle.UsageBytes, want)
			}
		}
		return nil
	}
	testenv.Eventually(t, 20*time.Second, func() error { return counted(round(0)) })
	publishedBefore, err := metric(t, bURL, "cardmeter_projector_published_total")
	if err != nil || publishedBefore == 0 {
		t.Fatalf("b published %v before the pause (%v): it folds nothing?", publishedBefore, err)
	}
	checkpointsBefore, _ := metric(t, bURL, "cardmeter_projector_checkpoint_bytes_total")

	// pause b past its leases: a takes its partitions and folds what came
	if err := syscall.Kill(b.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	pos := round(1)
	testenv.Eventually(t, 30*time.Second, func() error {
		if h, err := held(apiURL); err != nil || h != 4 {
			return fmt.Errorf("a holds %d (%v)", h, err)
		}
		return counted(pos)
	})
	t.Logf("a folds b's partitions %s after the pause", time.Since(paused).Round(time.Millisecond))
	pos = round(2) // b's former partitions have new records when it wakes

	// resumed, b learns it lost them before it does anything with them
	if err := syscall.Kill(b.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		h, err := held(bURL)
		if err != nil || h != 0 {
			return fmt.Errorf("b holds %d (%v)", h, err)
		}
		published, _ := metric(t, bURL, "cardmeter_projector_published_total")
		checkpoints, _ := metric(t, bURL, "cardmeter_projector_checkpoint_bytes_total")
		if published != publishedBefore || checkpoints != checkpointsBefore {
			t.Errorf("the stale owner published %v messages and stored %v checkpoint bytes after its pause",
				published-publishedBefore, checkpoints-checkpointsBefore)
		}
		return nil
	})
	// then it takes its share again, and nothing is counted twice
	testenv.Eventually(t, 30*time.Second, func() error {
		if h, err := held(bURL); err != nil || h != 2 {
			return fmt.Errorf("b holds %d (%v)", h, err)
		}
		return ready(bURL)
	})
	pos = round(3)
	testenv.Eventually(t, 20*time.Second, func() error { return counted(pos) })
}

func ready(base string) error {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s/readyz: %d %s", base, resp.StatusCode, b)
	}
	return nil
}

func put(t *testing.T, url, body string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT %s: %d %s", url, resp.StatusCode, b)
	}
}
