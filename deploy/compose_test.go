package deploy

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// docker-compose validates the file without a Docker engine. `make test`
// installs Debian's docker-compose (deploy/local/deps.sh).
func TestComposeFileIsValid(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose not found: run `make test`, which installs it (deploy/local/deps.sh)")
	}
	out, err := exec.Command(bin, "-f", "../docker-compose.yml", "config", "-q").CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose.yml is invalid: %v\n%s", err, out)
	}
	// and it really runs the services the README promises
	out, err = exec.Command(bin, "-f", "../docker-compose.yml", "config", "--services").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"nats", "clickhouse", "ingest", "projector", "clock", "sink"} {
		if !slices.Contains(strings.Split(strings.TrimSpace(string(out)), "\n"), svc) {
			t.Errorf("docker-compose.yml has no service %q (has: %s)", svc, out)
		}
	}
}
