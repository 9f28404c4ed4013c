package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/testenv"
)

func bareServer(t *testing.T) jetstream.JetStream {
	s, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

// The partition count is written in the log at its first start and read
// from there; a different count is refused, saying what the log has.
func TestTopologyIsStoredOnce(t *testing.T) {
	js := bareServer(t)
	ctx := context.Background()
	topo := broker.DefaultTopology
	topo.Partitions = 0 // none given: a new log takes the default
	got, err := broker.Ensure(ctx, js, topo)
	if err != nil || got.Partitions != broker.DefaultTopology.Partitions {
		t.Fatalf("a new log: %+v, %v", got, err)
	}
	topo.Partitions = 32
	_, err = broker.Ensure(ctx, js, topo)
	if !errors.Is(err, broker.ErrTopology) || !strings.Contains(err.Error(), "the log has 8") {
		t.Fatalf("a conflicting count: %v", err)
	}
	for _, n := range []int{0, 8} {
		topo.Partitions = n
		if got, err := broker.Ensure(ctx, js, topo); err != nil || got.Partitions != 8 {
			t.Fatalf("Ensure with %d: %+v, %v", n, got, err)
		}
	}
	read, err := broker.Check(ctx, js)
	if err != nil || read.Partitions != 8 || read.Replicas != 1 {
		t.Fatalf("Check: %+v, %v", read, err)
	}
	if _, err := broker.CheckPartitions(4, read); !errors.Is(err, broker.ErrTopology) {
		t.Fatalf("a role configured with 4 partitions: %v", err)
	}
	if n, err := broker.CheckPartitions(0, read); err != nil || n != 8 {
		t.Fatalf("a role configured with none: %d, %v", n, err)
	}
	// the lease bucket's time to live is the topology's
	kv, err := js.KeyValue(ctx, broker.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := kv.Status(ctx); st.TTL() != broker.DefaultTopology.LeaseTTL {
		t.Fatalf("lease bucket TTL %s", st.TTL())
	}
}

// A log set up before the count was written takes the configured one, and
// keeps it from then on.
func TestOlderLogGetsItsCountWritten(t *testing.T) {
	js := bareServer(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: broker.StreamMeter, Subjects: []string{"meter.>"}, Duplicates: 30 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := broker.Check(ctx, js); err == nil {
		t.Fatal("Check passed a log with no buckets and no count")
	}
	topo := broker.DefaultTopology
	topo.Partitions = 0
	if _, err := broker.Ensure(ctx, js, topo); !errors.Is(err, broker.ErrTopology) {
		t.Fatalf("an older log with nothing to say its count took a default: %v", err)
	}
	topo.Partitions = 4
	if got, err := broker.Ensure(ctx, js, topo); err != nil || got.Partitions != 4 {
		t.Fatalf("%+v, %v", got, err)
	}
	topo.Partitions = 0
	if got, err := broker.Ensure(ctx, js, topo); err != nil || got.Partitions != 4 {
		t.Fatalf("the count written: %+v, %v", got, err)
	}
}

// An older log whose checkpoints say their partition count gets that
// count, not a default, and a different one is refused.
func TestOlderLogTakesItsCheckpointsCount(t *testing.T) {
	js := bareServer(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: broker.StreamMeter, Subjects: []string{"meter.>"}}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: broker.BucketCheckpoints})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "partition-0", []byte(`{"version":1,"partition":0,"partitions":16}`)); err != nil {
		t.Fatal(err)
	}
	topo := broker.DefaultTopology
	topo.Partitions = 8
	if _, err := broker.Ensure(ctx, js, topo); !errors.Is(err, broker.ErrTopology) || !strings.Contains(err.Error(), "made with 16") {
		t.Fatalf("8 against checkpoints of 16: %v", err)
	}
	topo.Partitions = 0
	if got, err := broker.Ensure(ctx, js, topo); err != nil || got.Partitions != 16 {
		t.Fatalf("%+v, %v", got, err)
	}
	if got, err := broker.ReadTopology(ctx, js); err != nil || got.Partitions != 16 {
		t.Fatalf("written: %+v, %v", got, err)
	}
}
