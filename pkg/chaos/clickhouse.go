package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// chServer is the campaign's own ClickHouse, run by the project's
// deploy/local/clickhouse.sh with its own data folder and ports, so that
// stopping it never touches the server other tests use.
type chServer struct {
	script  string // deploy/local/clickhouse.sh
	dataDir string // CARDMETER_DATA for the script: the server lives in dataDir/clickhouse
	tcpPort int
	http    int
	logPath string
}

func (c *chServer) addr() string { return "127.0.0.1:" + strconv.Itoa(c.tcpPort) }

// run runs the script with a verb (start, stop) and waits for it: start
// returns once the server answers, stop once it has exited.
func (c *chServer) run(ctx context.Context, verb string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, "bash", c.script, verb)
	cmd.Env = append(os.Environ(), "CARDMETER_DATA="+c.dataDir,
		"CLICKHOUSE_TCP_PORT="+strconv.Itoa(c.tcpPort), "CLICKHOUSE_HTTP_PORT="+strconv.Itoa(c.http))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("clickhouse.sh %s: %w (see %s)", verb, err, c.logPath)
	}
	return nil
}

// open connects to the campaign's database.
func (c *chServer) open(db string) (driver.Conn, error) {
	return clickhouse.Open(&clickhouse.Options{Addr: []string{c.addr()},
		Auth: clickhouse.Auth{Database: db, Username: "default"}, DialTimeout: 5 * time.Second,
		ReadTimeout: time.Minute})
}

// findScript walks up from the working directory to the module root and
// returns its deploy/local/clickhouse.sh.
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "deploy", "local", "clickhouse.sh")
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run from inside the cardmeter module")
		}
		dir = parent
	}
}
