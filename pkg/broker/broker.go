// Package broker starts the embedded JetStream server, connects to it or to
// an external NATS, and creates cardmeter's streams and buckets. It also
// names the subjects: every other package asks here, so the topology is
// written down in one place.
package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Stream and bucket names.
const (
	StreamMeter       = "METER"            // every input: usage chunks, billing, commands, clock ticks
	StreamEvents      = "EVENTS"           // what the projector emits, for downstream services
	StreamAccepted    = "ACCEPTED"         // usage the projector counted, for the sink
	StreamRejected    = "REJECTED"         // records refused at ingest, kept for audit
	StreamAudit       = "AUDIT"            // every write to the API: who, with which scope, what, and what came of it
	StreamDead        = "WEBHOOK_DEAD"     // events a webhook could not deliver within its retry window
	StreamAttempts    = "WEBHOOK_ATTEMPTS" // each webhook delivery attempt (in memory: for operators, not the truth)
	BucketSnapshot    = "snapshots"        // projector checkpoint pieces and record-id index segments
	BucketCheckpoints = "checkpoints"      // each partition's checkpoint manifest, updated by compare-and-set
	BucketDir         = "directory"        // cards and plans, for routing and validation at ingest
	BucketBatches     = "batches"          // the first answer to each usage batch, for idempotent retries
	BucketResolved    = "resubmitted"      // rejected records that were re-submitted, by rejection id
	BucketLeases      = "leases"           // which instance of a role holds each partition (pkg/lease)
	BucketSink        = "sink"             // how far the sink has written each partition into ClickHouse, and the block it is writing
	BucketWebhooks    = "webhooks"         // webhook subscriptions, their secrets and state
	BucketRetries     = "webhook_retries"  // when each failing webhook event was first tried
	BucketStatus      = "status"           // each running role's last report of itself (GET /v1/status)
	BucketSimulations = "simulations"      // what-if simulations, their progress and results (a day)
)

// SimulateSubject is where the API asks the simulators (the projector
// role) to run a simulation.
const SimulateSubject = "cardmeter.simulate"

// Subjects of partition p in METER.
func UsageSubject(p int) string   { return "meter." + strconv.Itoa(p) + ".usage" }
func BillingSubject(p int) string { return "meter." + strconv.Itoa(p) + ".billing" }
func ClockSubject(p int) string   { return "meter." + strconv.Itoa(p) + ".clock" }

// OutcomeSubject carries what the pipeline's own roles report back into
// the log (a webhook disabled, a carrier's answer), folded like any input.
func OutcomeSubject(p int) string { return "meter." + strconv.Itoa(p) + ".outcome" }

// IsUsageSubject reports whether a METER subject carries usage chunks.
func IsUsageSubject(subject string) bool { return strings.HasSuffix(subject, ".usage") }

func PartitionFilter(p int) string {
	return "meter." + strconv.Itoa(p) + ".>"
}

// AcceptedSubject carries the usage of partition p the projector counted.
func AcceptedSubject(p int) string { return "accepted." + strconv.Itoa(p) }

// RejectedSubject carries refused records of a carrier.
func RejectedSubject(carrier string) string { return "rejected." + carrier }

// AuditSubject carries the API's audit entries.
const AuditSubject = "audit.api"

// QuerySubject is where the projector owning partition p answers reads.
func QuerySubject(p int) string { return "cardmeter.query." + strconv.Itoa(p) }

// EventSubject is the public subject of an emitted event, for example
// cardmeter.events.card.stopped.89860012345678901234.
func EventSubject(kind, subject string) string { return "cardmeter.events." + kind + "." + subject }

// Partition maps an account to its partition: one writer folds an account
// and all its cards, since arrears and pools span them.
// The hash is 32-bit FNV-1a of the account id: the mapping is part of the
// log's layout and never changes.
func Partition(accountID string, partitions int) int {
	return PartitionOfHash(AccountHash(accountID), partitions)
}

// AccountHash is the hash Partition maps an account by, for callers that
// keep it instead of the account id.
func AccountHash(accountID string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(accountID); i++ {
		h ^= uint32(accountID[i])
		h *= 16777619
	}
	return h
}

// PartitionOfHash is Partition for an AccountHash.
func PartitionOfHash(h uint32, partitions int) int { return int(h % uint32(partitions)) }

// EmbeddedConfig configures the in-process JetStream server.
type EmbeddedConfig struct {
	StoreDir string // where JetStream keeps its files
	Host     string // default 127.0.0.1
	Port     int    // -1 picks a free port; 0 means 4222
	// NoSync acknowledges writes before the disk has them (they reach it
	// within the server's sync interval and at shutdown). Only for loading
	// fixtures that can be made again, such as the benchmark's fleet; the
	// pipeline never runs so.
	NoSync bool
	// Users may connect, each with its password and permissions; none:
	// anyone who reaches the port may (tests and benchmarks only: the
	// all-in-one always names its users).
	Users []User
	// Name is the server's name (default cardmeter-embedded): unique in a
	// cluster.
	Name string
	// ClusterPort, when not 0, makes the server a node of the cluster
	// ClusterName (default cardmeter) whose other nodes' route URLs are
	// Routes (nats://host:port): for tests of a JetStream cluster in one
	// process. Production clusters run nats-server (deploy/nats).
	ClusterPort int
	ClusterName string
	Routes      []string
}

// StartEmbedded starts a JetStream server in this process. It syncs every
// write to disk before acknowledging it (SyncAlways), so a publish ack means
// the message survives a power cut.
func StartEmbedded(cfg EmbeddedConfig, log *zap.Logger) (*server.Server, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Name == "" {
		cfg.Name = "cardmeter-embedded"
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		SyncAlways: !cfg.NoSync,
		NoSigs:     true,
		MaxPayload: 8 << 20,
		Users:      serverUsers(cfg.Users),
	}
	if cfg.ClusterPort != 0 {
		if cfg.ClusterName == "" {
			cfg.ClusterName = "cardmeter"
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: cfg.Host, Port: cfg.ClusterPort}
		opts.Routes = server.RoutesFromStr(strings.Join(cfg.Routes, ","))
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded nats: not ready after 30 s")
	}
	log.Info("embedded jetstream started", zap.String("url", s.ClientURL()), zap.String("store_dir", cfg.StoreDir), zap.Bool("sync_always", !cfg.NoSync))
	return s, nil
}

// Connect connects to NATS with reconnects and a name for monitoring; opts
// add credentials (nats.UserInfo, nats.UserCredentials).
func Connect(url, name string, log *zap.Logger, opts ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(url, append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true), // a server that is not up yet is waited for, like a lost one
		nats.ReconnectWait(500 * time.Millisecond),
		// nothing is kept to send after a reconnect: a publish while
		// disconnected fails now (JetStream publishes are acknowledged and
		// retried by their callers), rather than leave later, when a
		// partition may be another instance's and the duplicate window
		// past
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", zap.String("url", c.ConnectedUrl())) }),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to nats at %s: %w", url, err)
	}
	return nc, nil
}

// Topology sizes the streams.
type Topology struct {
	Partitions      int
	Replicas        int           // copies of each stream: 1 on one server, 3 on a cluster; 0 in Ensure: as the log has them
	DuplicateWindow time.Duration // how long a retried publish is recognised
	EventsMaxAge    time.Duration // how long downstream services can lag
	// LeaseTTL is how long a partition's lease outlives its owner's last
	// renewal (the leases bucket's MaxAge): the longest a partition waits
	// for a new owner after its owner dies.
	LeaseTTL time.Duration
}

// BatchAnswerTTL is how long the answer to a usage batch is kept for a
// retry with the same Idempotency-Key (or body) to get it again.
const BatchAnswerTTL = 24 * time.Hour

// DefaultTopology is used by the all-in-one and tests. Its Partitions
// are a new single-node log's; a new log with more than one replica gets
// ClusterPartitions.
var DefaultTopology = Topology{Partitions: 8, Replicas: 0, DuplicateWindow: 30 * time.Minute, EventsMaxAge: 30 * 24 * time.Hour, LeaseTTL: 10 * time.Second}

// ClusterPartitions is the partition count of a new log with more than
// one replica: a cluster's instances spread over up to this many
// partitions. One node keeps 8: there, each batch cut into four times as
// many messages (each fsynced on METER and ACCEPTED) cost a third of the
// end-to-end rate (BENCHMARKS.md, "8 partitions against 32 on one node").
const ClusterPartitions = 32

// The log's metadata keys: the topology is written on METER at its first
// start, and read from there by every role and command.
const (
	MetaPartitions = "cardmeter_partitions"
	MetaReplicas   = "cardmeter_replicas"
)

// ErrTopology is a setting that conflicts with the log's topology.
var ErrTopology = errors.New("conflicts with the log's topology")

// Ensure creates or updates every stream and bucket, and returns the
// topology in force. It is idempotent, so every service may call it at
// start. The partition count is the log's for good once written: t's
// Partitions, when not 0, must equal it (0 takes the log's, or the
// default for a new log). Replicas, when not 0, are set: an existing
// deployment's streams and buckets are updated to them (0 keeps the
// log's, 1 for a new log).
func Ensure(ctx context.Context, js jetstream.JetStream, t Topology) (Topology, error) {
	if t.LeaseTTL == 0 { // as the bucket has it (the default for a new one)
		t.LeaseTTL = DefaultTopology.LeaseTTL
		if kv, err := js.KeyValue(ctx, BucketLeases); err == nil {
			if st, err := kv.Status(ctx); err == nil && st.TTL() > 0 {
				t.LeaseTTL = st.TTL()
			}
		}
	}
	had, err := ReadTopology(ctx, js)
	isNew := errors.Is(err, jetstream.ErrStreamNotFound)
	switch {
	case isNew:
		had = Topology{}
	case err != nil:
		return t, err
	case had.Partitions == 0:
		// a log set up before the count was written in it: take the count
		// its checkpoints were made with, or the one given; never a
		// default, which could differ from what routed its messages
		n, err := countOfCheckpoints(ctx, js)
		switch {
		case err != nil:
			return t, err
		case n != 0 && t.Partitions != 0 && n != t.Partitions:
			return t, fmt.Errorf("%d partitions %w: the log's checkpoints were made with %d; set it to %d", t.Partitions, ErrTopology, n, n)
		case n != 0:
			t.Partitions = n
		case t.Partitions == 0:
			return t, fmt.Errorf("the log was set up before its partition count was written in it, and no checkpoint says it: %w; give the count it was made with (--partitions) once", ErrTopology)
		}
	case t.Partitions != 0 && had.Partitions != t.Partitions:
		return t, fmt.Errorf("%d partitions %w: the log has %d, written at its first start and fixed for good; drop the setting or set it to %d", t.Partitions, ErrTopology, had.Partitions, had.Partitions)
	default:
		t.Partitions = had.Partitions
	}
	if t.Replicas == 0 { // as the log has them (1 for a new log)
		t.Replicas = max(had.Replicas, 1)
	}
	if t.Partitions == 0 { // a new log's
		t.Partitions = DefaultTopology.Partitions
		if t.Replicas > 1 {
			t.Partitions = ClusterPartitions
		}
	}
	meta := map[string]string{MetaPartitions: strconv.Itoa(t.Partitions), MetaReplicas: strconv.Itoa(t.Replicas)}
	if isNew {
		// created, not created-or-updated: of two first starts at once,
		// the second reads the count the first wrote
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: StreamMeter, Subjects: []string{"meter.>"}, Description: "cardmeter inputs: the log that is the truth",
			Duplicates: t.DuplicateWindow, MaxMsgSize: 8 << 20, Metadata: meta, Storage: jetstream.FileStorage, Replicas: t.Replicas})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return Ensure(ctx, js, t)
		}
		if err != nil {
			return t, fmt.Errorf("stream %s: %w", StreamMeter, err)
		}
	}
	streams := []jetstream.StreamConfig{
		{Name: StreamMeter, Subjects: []string{"meter.>"}, Description: "cardmeter inputs: the log that is the truth",
			Duplicates: t.DuplicateWindow, MaxMsgSize: 8 << 20, Metadata: meta},
		{Name: StreamEvents, Subjects: []string{"cardmeter.events.>"}, Description: "events emitted by the projector",
			Duplicates: t.DuplicateWindow, MaxAge: t.EventsMaxAge},
		{Name: StreamAccepted, Subjects: []string{"accepted.>"}, Description: "usage counted by the projector, for the sink",
			Duplicates: t.DuplicateWindow, MaxAge: t.EventsMaxAge, MaxMsgSize: 8 << 20},
		{Name: StreamRejected, Subjects: []string{"rejected.>"}, Description: "records refused at ingest, for audit",
			Duplicates: t.DuplicateWindow, MaxAge: 90 * 24 * time.Hour},
		// entries can be neither deleted nor purged, only age out
		{Name: StreamAudit, Subjects: []string{"audit.>"}, Description: "every write to the API: who, scope, what, decision",
			MaxAge: 400 * 24 * time.Hour, MaxBytes: 1 << 30, Discard: jetstream.DiscardOld, DenyDelete: true, DenyPurge: true},
	}
	for _, cfg := range streams {
		cfg.Storage = jetstream.FileStorage
		cfg.Replicas = t.Replicas
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return t, fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: BucketSnapshot,
		Description: "projector checkpoint pieces and record-id index segments", Storage: jetstream.FileStorage, Replicas: t.Replicas}); err != nil {
		return t, fmt.Errorf("object store %s: %w", BucketSnapshot, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketCheckpoints,
		Description: "projector checkpoint manifests, one per partition", Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 4}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketCheckpoints, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketBatches,
		Description: "first answers of usage batches", Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: BatchAnswerTTL}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketBatches, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketResolved,
		Description: "re-submitted rejections", Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: 90 * 24 * time.Hour}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketResolved, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketDir,
		Description: "card and plan directory for ingest routing", Storage: jetstream.FileStorage, Replicas: t.Replicas}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketDir, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketLeases,
		Description: "partition leases of the projector and sink instances", Storage: jetstream.FileStorage, Replicas: t.Replicas,
		TTL: t.LeaseTTL, History: 1}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketLeases, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketSink,
		Description: "the sink's position in each partition and the block it is writing", Storage: jetstream.FileStorage, Replicas: t.Replicas,
		History: 1}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketSink, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketWebhooks,
		Description: "webhook subscriptions, their signing secrets and state", Storage: jetstream.FileStorage, Replicas: t.Replicas,
		History: 1}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketWebhooks, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketRetries,
		Description: "the first attempt of each webhook event still failing, so that its retry window outlives a restart", Storage: jetstream.FileStorage,
		Replicas: t.Replicas, History: 1, TTL: RetriesTTL}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketRetries, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketStatus,
		Description: "each running role's last report of itself, for GET /v1/status (gone a minute after its role stops reporting)",
		Storage:     jetstream.MemoryStorage, Replicas: t.Replicas, History: 1, TTL: StatusTTL}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketStatus, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketSimulations,
		Description: "what-if simulations (POST /v1/simulations): each one's progress, then its result, for a day", Storage: jetstream.FileStorage,
		Replicas: t.Replicas, History: 1, TTL: 24 * time.Hour, MaxValueSize: 1 << 20}); err != nil {
		return t, fmt.Errorf("kv %s: %w", BucketSimulations, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: StreamDead, Subjects: []string{"webhooks.dead.>"},
		Description: "events a webhook did not take within its retry window, by subscription", Storage: jetstream.FileStorage,
		Replicas: t.Replicas, MaxAge: 30 * 24 * time.Hour, Duplicates: t.DuplicateWindow}); err != nil {
		return t, fmt.Errorf("stream %s: %w", StreamDead, err)
	}
	// attempts are for operators to look at, not the truth: in memory
	// (no fsync per attempt), the last 1,000 per subscription
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: StreamAttempts, Subjects: []string{"webhooks.attempts.>"},
		Description: "webhook delivery attempts, by subscription", Storage: jetstream.MemoryStorage,
		Replicas: t.Replicas, MaxAge: 7 * 24 * time.Hour, MaxMsgsPerSubject: 1000, MaxBytes: 256 << 20, Discard: jetstream.DiscardOld}); err != nil {
		return t, fmt.Errorf("stream %s: %w", StreamAttempts, err)
	}
	return t, nil
}

// StatusTTL is how long a role's report stays in the status bucket after
// its last write (roles write every StatusEvery).
const StatusTTL = time.Minute

// RetriesTTL is how long the retries bucket keeps an event's first
// attempt: the longest retry window a notifier may have.
const RetriesTTL = 7 * 24 * time.Hour

// DeadSubject is where subscription id's dead letters go.
func DeadSubject(id string) string { return "webhooks.dead." + id }

// AttemptsSubject is where subscription id's delivery attempts go.
func AttemptsSubject(id string) string { return "webhooks.attempts." + id }

// StreamNames are every stream of the topology, buckets included (a
// bucket is a stream named KV_<bucket> or OBJ_<bucket>).
var StreamNames = []string{StreamMeter, StreamEvents, StreamAccepted, StreamRejected, StreamAudit,
	"OBJ_" + BucketSnapshot, "KV_" + BucketCheckpoints, "KV_" + BucketBatches, "KV_" + BucketResolved, "KV_" + BucketDir, "KV_" + BucketLeases, "KV_" + BucketSink,
	"KV_" + BucketWebhooks, "KV_" + BucketRetries, StreamDead, StreamAttempts, "KV_" + BucketStatus, "KV_" + BucketSimulations}

// Check reports whether every stream and bucket exists, for a role whose
// user may not create them (the setup step, `cardmeter setup`, does), and
// returns the log's topology.
func Check(ctx context.Context, js jetstream.JetStream) (Topology, error) {
	for _, name := range StreamNames {
		if _, err := js.Stream(ctx, name); err != nil {
			return Topology{}, fmt.Errorf("stream %s: %w (run `cardmeter setup` as the NATS admin)", name, err)
		}
	}
	t, err := ReadTopology(ctx, js)
	if err == nil && t.Partitions == 0 {
		err = fmt.Errorf("stream %s has no partition count in its metadata (run `cardmeter setup` as the NATS admin)", StreamMeter)
	}
	return t, err
}

// countOfCheckpoints is the partition count the projector's checkpoint
// manifests record (0: none).
func countOfCheckpoints(ctx context.Context, js jetstream.JetStream) (int, error) {
	kv, err := js.KeyValue(ctx, BucketCheckpoints)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	e, err := kv.Get(ctx, "partition-0")
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var m struct {
		Partitions int `json:"partitions"`
	}
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return 0, fmt.Errorf("checkpoint manifest of partition 0: %w", err)
	}
	return m.Partitions, nil
}

// ReadTopology reads the topology the log was set up with: its partition
// count and replicas (0 partitions for a log set up before they were
// written there).
func ReadTopology(ctx context.Context, js jetstream.JetStream) (Topology, error) {
	st, err := js.Stream(ctx, StreamMeter)
	if err != nil {
		return Topology{}, err
	}
	info := st.CachedInfo()
	t := DefaultTopology
	t.Partitions, t.Replicas = 0, info.Config.Replicas
	if v, ok := info.Config.Metadata[MetaPartitions]; ok {
		if t.Partitions, err = strconv.Atoi(v); err != nil || t.Partitions <= 0 {
			return t, fmt.Errorf("stream %s: partition count %q in its metadata is not a positive number", StreamMeter, v)
		}
	}
	return t, nil
}

// CheckPartitions compares a configured partition count with the log's:
// 0 takes the log's.
func CheckPartitions(configured int, t Topology) (int, error) {
	if configured != 0 && configured != t.Partitions {
		return 0, fmt.Errorf("%d partitions %w: the log has %d; drop the setting or set it to %d", configured, ErrTopology, t.Partitions, t.Partitions)
	}
	return t.Partitions, nil
}
