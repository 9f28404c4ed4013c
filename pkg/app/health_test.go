package app

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// A process without the API serves its health endpoints and metrics on
// --health-addr, and stops cleanly (a SIGTERM must not panic it).
func TestHealthOnlyProcessStops(t *testing.T) {
	p, err := Start(context.Background(), Config{Roles: []string{RoleProjector, RoleClock}, DataDir: t.TempDir(), NATSPort: -1,
		HealthAddr: "127.0.0.1:0", Partitions: 2, ManualClock: true, ClockStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, p.Projector.Ready)
	if p.HealthURL == "" {
		t.Fatal("no health address")
	}
	resp, err := http.Get(p.HealthURL + "/metrics")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %v %v", resp, err)
	}
	resp.Body.Close()
	p.Stop()
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
}
