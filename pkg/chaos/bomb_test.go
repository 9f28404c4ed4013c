package chaos

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// bombLimit is the memory the all-in-one may write to in the bomb test
// (ulimit -d: what it reserves and never touches does not count, as in a
// container's memory limit; Go reserves over 1 GiB of address space it
// does not use, so ulimit -v would measure that instead).
const bombLimit = 2 << 30

// gzipOf compresses head, then fill repeated n times, then tail.
func gzipOf(t *testing.T, head string, fill []byte, n int, tail string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zw.Write([]byte(head))
	for i := 0; i < n; i++ {
		zw.Write(fill)
	}
	zw.Write([]byte(tail))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestGzipBombsUnderAMemoryLimit sends sixteen gzip bombs at once to the
// all-in-one running under a 2 GiB memory limit (ulimit -d): lines
// of 128 MiB in each format, and batches that inflate into more
// records, rejected or valid, than a batch may hold. Each is refused with
// its limit named (or 503 with Retry-After when the ingest memory budget
// is held by the others), the process stays up, and a normal batch is
// counted after. Before issue 11, one such bomb took a server from 30 MB
// to 3.5 GB and three killed it under 8 GiB.
func TestGzipBombsUnderAMemoryLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the all-in-one")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()
	bin, err := Build(ctx, work)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	ch := testenv.ClickHouse(t)
	logPath := filepath.Join(work, "cardmeter.log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// the limit is set in a shell that then becomes the server
	cmd := exec.Command("bash", "-c", fmt.Sprintf(`ulimit -d %d && exec "$0" "$@"`, bombLimit>>10), bin, "run",
		"--data-dir", filepath.Join(work, "data"), "--http-addr", addr, "--nats-port", strconv.Itoa(ports[1]),
		"--clickhouse-addr", ch.Addr, "--clickhouse-db", ch.Database, "--max-records", "100000",
		"--clock", "manual", "--clock-start", "2026-03-10T12:00:00Z", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	base := "http://" + addr
	alive := func() error {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			if i := bytes.Index(log, []byte("fatal error")); i >= 0 {
				log = log[i:]
			} else if i := bytes.Index(log, []byte("panic:")); i >= 0 {
				log = log[i:]
			}
			t.Fatalf("the server exited (%v):\n%s", err, head(log, 4000))
		default:
		}
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	}
	testenv.Eventually(t, 90*time.Second, alive)
	put := func(path, body string) {
		req, _ := http.NewRequest("PUT", base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("PUT %s: %d", path, resp.StatusCode)
		}
	}
	put("/v1/plans/p", `{"quota_bytes": 1000000000000}`)
	const card = "89860012345678901238"
	put("/v1/cards/"+card, `{"account_id":"a","plan_id":"p","carrier":"cmcc"}`)

	header := "record_id,iccid,imsi,start_time,end_time,bytes_up,bytes_down\n"
	a := bytes.Repeat([]byte("a"), 1<<20)
	unknownRow := []byte("u,89860000000000000001,,2026-03-10T10:00:00Z,2026-03-10T10:30:00Z,0,1\n")
	validRow := []byte("v," + card + ",,2026-03-10T10:00:00Z,2026-03-10T10:30:00Z,0,1\n")
	type bomb struct {
		name, ctype string
		body        []byte
		want        []int
	}
	line := []int{400, 413}
	bombs := []bomb{
		{"csv line", "text/csv", gzipOf(t, header, a, 128, "\n"), line},
		{"ndjson line", "application/x-ndjson", gzipOf(t, `{"record_id":"`, a, 128, "\"}\n"), line},
		{"json element", "application/json", gzipOf(t, `[{"record_id":"`, a, 128, "\"}]"), line},
		{"csv header", "text/csv", gzipOf(t, "record_id", a, 128, "\n"), line},
		{"rejections", "text/csv", gzipOf(t, header, bytes.Repeat(unknownRow, 1000), 300, ""), []int{413}},
		{"records", "text/csv", gzipOf(t, header, bytes.Repeat(validRow, 1000), 300, ""), []int{413}},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	answers := map[string][]int{}
	for i := 0; i < 16; i++ {
		b := bombs[i%len(bombs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", base+"/v1/usage?carrier=cmcc&wait=false", bytes.NewReader(b.body))
			req.Header.Set("Content-Type", b.ctype)
			req.Header.Set("Content-Encoding", "gzip")
			req.Header.Set("Idempotency-Key", fmt.Sprint("bomb-", i))
			code := 0
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			answers[b.name] = append(answers[b.name], code)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, b := range bombs {
		for _, code := range answers[b.name] {
			if code == 503 {
				continue // the budget held by the others: retry later
			}
			ok := false
			for _, w := range b.want {
				ok = ok || code == w
			}
			if !ok {
				t.Errorf("%s bomb (%d KiB): answered %d, want one of %v", b.name, len(b.body)>>10, code, b.want)
			}
		}
	}
	if err := alive(); err != nil {
		t.Fatal(err)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmHWM") || strings.HasPrefix(l, "VmPeak") {
			t.Log(l)
		}
	}
	t.Logf("answers: %v", answers)
	// and it still counts a normal batch
	req, _ := http.NewRequest("POST", base+"/v1/usage?carrier=cmcc", strings.NewReader(header+"ok1,"+card+",,2026-03-10T10:00:00Z,2026-03-10T10:30:00Z,0,7\n"))
	req.Header.Set("Content-Type", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(raw, []byte(`"stored": 1`)) {
		t.Fatalf("a normal batch after the bombs: %d %s", resp.StatusCode, raw)
	}
}

func head(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
