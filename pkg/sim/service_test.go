package sim

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

// A simulator that restarts fails the jobs it had taken (queued or
// running): they would not end otherwise. Other simulators' jobs, and
// ended ones, stay as they are.
func TestARestartFailsItsJobs(t *testing.T) {
	_, js := testenv.JetStream(t)
	ctx := context.Background()
	if _, err := broker.Ensure(ctx, js, broker.DefaultTopology); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, broker.BucketSimulations)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []Job{{ID: "a", Status: StatusRunning, Simulator: "me"}, {ID: "b", Status: StatusQueued, Simulator: "me"},
		{ID: "c", Status: StatusRunning, Simulator: "other"}, {ID: "d", Status: StatusDone, Simulator: "me"}} {
		b, _ := json.Marshal(j)
		if _, err := kv.Put(ctx, j.ID, b); err != nil {
			t.Fatal(err)
		}
	}
	abandon(ctx, kv, "me", testenv.Logger(t))
	for id, want := range map[string]string{"a": StatusFailed, "b": StatusFailed, "c": StatusRunning, "d": StatusDone} {
		e, err := kv.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var j Job
		if err := json.Unmarshal(e.Value(), &j); err != nil || j.Status != want {
			t.Errorf("job %s: %s (%s), want %s", id, j.Status, j.Error, want)
		}
	}
}
