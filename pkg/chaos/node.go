package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// node runs the all-in-one binary as a child process and kills it. One
// goroutine (the campaign's) drives it; exited may be called from any.
type node struct {
	bin     string
	args    []string
	env     []string // added to the harness's environment
	logPath string
	api     *apiClient
	log     *zap.Logger

	mu      sync.Mutex
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{} // closed when the process has exited
	state   *os.ProcessState
	killed  bool // the harness signalled it: its exit is expected
}

// start starts the process on the same data folder; its output is
// appended to logPath.
func (n *node) start() error {
	out, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n==== chaos: start at %s ====\n", time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(n.bin, n.args...)
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stdout, cmd.Stderr = out, out
	// Pdeathsig: the child dies with the harness, however the harness ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("starting %s: %w", n.bin, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.started, n.done, n.state, n.killed = cmd, time.Now(), done, nil, false
	n.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		out.Close()
		n.mu.Lock()
		n.state = cmd.ProcessState
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// startedAt is when the current process was started.
func (n *node) startedAt() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.started
}

// running reports whether a started process has not exited.
func (n *node) running() bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// exitedUnasked reports a process that exited without the harness
// signalling it, and how.
func (n *node) exitedUnasked() (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil || n.killed {
		return "", false
	}
	select {
	case <-n.done:
		return n.state.String(), true
	default:
		return "", false
	}
}

// kill sends SIGKILL and waits for the exit.
func (n *node) kill() {
	n.signal(syscall.SIGKILL)
	n.wait(time.Minute)
}

// terminate sends SIGTERM and waits up to grace for a clean exit; past it
// the process is killed. It returns how the process ended and whether it
// exited by itself within grace with status 0.
func (n *node) terminate(grace time.Duration) (string, bool) {
	if !n.running() {
		return "not running", true
	}
	n.signal(syscall.SIGTERM)
	if !n.wait(grace) {
		n.kill()
		return fmt.Sprintf("still running %s after SIGTERM: killed", grace), false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.String(), n.state.Success()
}

func (n *node) signal(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.killed = true
	_ = n.cmd.Process.Signal(sig)
}

// wait waits up to d for the process to exit.
func (n *node) wait(d time.Duration) bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// readiness is what /readyz answered.
type readiness struct {
	Ready   bool
	Lag     uint64 // projector_lag_messages
	Pending uint64 // sink_pending_messages
	Detail  string // why not ready
}

// readyz asks /readyz once.
func (n *node) readyz(ctx context.Context) readiness {
	code, body, err := n.api.get(ctx, "/readyz", 2*time.Second)
	if err != nil {
		return readiness{Detail: err.Error()}
	}
	var r struct {
		Lag     *uint64 `json:"projector_lag_messages"`
		Pending *uint64 `json:"sink_pending_messages"`
		Detail  string  `json:"detail"`
	}
	_ = json.Unmarshal(body, &r)
	if code != 200 {
		d := r.Detail
		if d == "" {
			d = fmt.Sprintf("HTTP %d: %s", code, truncate(body, 200))
		}
		return readiness{Detail: d}
	}
	rd := readiness{Ready: true}
	if r.Lag != nil {
		rd.Lag = *r.Lag
	}
	if r.Pending != nil {
		rd.Pending = *r.Pending
	}
	return rd
}

// errNeverReady is a start that did not become ready within its bound.
type errNeverReady struct {
	within time.Duration
	last   string // the last reason /readyz gave
	exited string // how the process ended, if it did
}

func (e *errNeverReady) Error() string {
	if e.exited != "" {
		return fmt.Sprintf("exited before ready (%s); last /readyz: %s", e.exited, e.last)
	}
	return fmt.Sprintf("not ready within %s; last /readyz: %s", e.within, e.last)
}

// waitReady polls /readyz every 50 ms until it answers 200 and returns the
// time from the process's start. It gives up after within, or when the
// process exits, with *errNeverReady.
func (n *node) waitReady(ctx context.Context, within time.Duration) (time.Duration, error) {
	n.mu.Lock()
	started, done := n.started, n.done
	n.mu.Unlock()
	deadline := started.Add(within)
	last := "no answer yet"
	for {
		rd := n.readyz(ctx)
		if rd.Ready {
			return time.Since(started), nil
		}
		if rd.Detail != "" {
			last = rd.Detail
		}
		select {
		case <-done:
			n.mu.Lock()
			st := n.state.String()
			n.mu.Unlock()
			return 0, &errNeverReady{within: within, last: last, exited: st}
		default:
		}
		if time.Now().After(deadline) {
			return 0, &errNeverReady{within: within, last: last}
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// halted reports whether a /readyz reason names a halted partition.
func halted(reason string) bool { return strings.Contains(reason, "halted") }
