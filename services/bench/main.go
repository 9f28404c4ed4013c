// Command bench is the load harness behind `make bench` (see pkg/bench).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/app"
	"github.com/cardmeter/cardmeter/pkg/bench"
	"github.com/cardmeter/cardmeter/pkg/broker"
)

func main() {
	var cfg bench.Config
	flag.StringVar(&cfg.DataDir, "data-dir", ".data/bench", "embedded JetStream files (removed first)")
	flag.StringVar(&cfg.ClickHouse.Addr, "clickhouse-addr", "127.0.0.1:19000", "ClickHouse native address")
	flag.StringVar(&cfg.ClickHouse.Database, "clickhouse-db", "cardmeter_bench", "ClickHouse database (dropped first)")
	flag.IntVar(&cfg.Cards, "cards", 1000000, "fleet size")
	flag.IntVar(&cfg.Partitions, "partitions", 0, "partitions of the log (0: the default for a new log)")
	flag.DurationVar(&cfg.SinkFlush, "sink-flush-interval", 0, "the sink's longest wait before a partial block is inserted (0: its default)")
	flag.DurationVar(&cfg.CheckpointInterval, "checkpoint-interval", 0, "the projector's longest time between checkpoints (0: its default)")
	flag.IntVar(&cfg.Accounts, "accounts", 1000, "accounts")
	flag.IntVar(&cfg.IngestRecords, "ingest-records", 3000000, "records per format for the ingest figure")
	flag.IntVar(&cfg.BatchRecords, "batch-records", 10000, "records per HTTP batch")
	flag.IntVar(&cfg.Workers, "workers", 4, "concurrent HTTP clients")
	flag.IntVar(&cfg.BaselineMsgs, "baseline-msgs", 200000, "messages of the baseline (one fsync each: about 6,000/s here)")
	flag.DurationVar(&cfg.E2E, "e2e", time.Minute, "how long the end-to-end ingest is sustained")
	flag.IntVar(&cfg.StopSamples, "stop-samples", 200, "stop latency samples")
	flag.IntVar(&cfg.StopLoad, "stop-load", 10000, "background CDRs/s during the stop latency run")
	gcPercent := flag.Int("gc-percent", app.DefaultGCPercent, "garbage collection target, as the services set it (GOGC, when set, wins)")
	memLimit := flag.Int("memory-limit-mib", 0, "soft memory limit in MiB, as the services set it: 0 half the machine's memory, -1 none")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (pipeline included) to this file")
	heapProfile := flag.String("heapprofile", "", "write heap profiles of the process (pipeline included) to FILE.settled once the fleet is loaded and FILE.end after the last figure")
	profileDir := flag.String("profile-dir", "", "write a CPU profile of each measured phase (pipeline included) to DIR/<phase>.prof")
	formats := flag.String("formats", "csv,ndjson", "ingest formats, in the order measured")
	replay := flag.Bool("replay", false, "measure only the replay from scratch and the projector's memory per card (no servers)")
	records := flag.Int("records", 10000000, "with -replay: records to fold")
	indexRun := flag.Bool("index", false, "measure only the projector's state with a realistic history: heap and disk per card and per id, checkpoints, restore, fold rates (no servers)")
	idsPerCard := flag.Int("ids-per-card", 2000, "with -index: remembered record ids per card (over three cycles)")
	cpRecords := flag.Int("checkpoint-records", 200000, "with -index: records folded between checkpoints")
	emptyDisk := flag.Bool("empty-disk", true, "with -index: also restore from a JetStream object store into an empty folder")
	foldProfile := flag.String("fold-cpuprofile", "", "with -index: CPU profiles of the measured folds of new records only, to this file (index) and this file.mem (every id in memory)")
	baseline := flag.Bool("baseline", true, "with -index: also fold the same records with every id in memory, for the rate to compare with")
	webhooksRun := flag.Bool("webhooks", false, "measure only webhook deliveries to a local receiver: latency at -webhook-rate events/s, then the delivery rate of a backlog (no ClickHouse)")
	webhookRate := flag.Int("webhook-rate", 1000, "with -webhooks: events published per second for the latency figure")
	webhookFor := flag.Duration("webhook-for", 30*time.Second, "with -webhooks: how long at that rate")
	webhookBurst := flag.Int("webhook-burst", 50000, "with -webhooks: events of the backlog")
	clusterRun := flag.Bool("cluster", false, "measure only durable ingest on one JetStream server against a three-node cluster (R1 / R3, alternating rounds) and the pause when METER's leader node is killed (no ClickHouse)")
	clusterRounds := flag.Int("cluster-rounds", 2, "with -cluster: rounds of each shape")
	clusterKills := flag.Int("cluster-kills", 10, "with -cluster: kills of METER's leader node under load")
	natsServer := flag.String("nats-server", "", "with -cluster: the nats-server binary (default: go install of the version this build pins)")
	flag.Parse()
	cfg.Log = os.Stderr
	app.TuneGC(*gcPercent, *memLimit, zap.NewNop())
	cfg.Formats = strings.Split(*formats, ",")
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if *profileDir != "" {
		if *cpuprofile != "" {
			fmt.Fprintln(os.Stderr, "bench: -cpuprofile and -profile-dir exclude each other")
			os.Exit(2)
		}
		if err := os.MkdirAll(*profileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		cfg.Phase = func(name string) func() {
			f, err := os.Create(filepath.Join(*profileDir, name+".prof"))
			if err == nil {
				err = pprof.StartCPUProfile(f)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench: profile:", err)
				return func() {}
			}
			return func() { pprof.StopCPUProfile(); f.Close() }
		}
	}
	writeHeap := func(suffix string) {
		if *heapProfile == "" {
			return
		}
		runtime.GC()
		f, err := os.Create(*heapProfile + "." + suffix)
		if err == nil {
			err = pprof.WriteHeapProfile(f)
			f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: heap profile:", err)
		}
	}
	cfg.Settled = func() { writeHeap("settled") }
	if *indexRun {
		r, err := bench.RunIndex(bench.IndexConfig{Cards: cfg.Cards, IDsPerCard: *idsPerCard, Dir: cfg.DataDir + "-index", CheckpointRecords: *cpRecords, Baseline: *baseline, HeapProfile: *heapProfile, EmptyDisk: *emptyDisk, FoldProfile: *foldProfile}, os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Printf("| projector state: %d cards × %d ids (%d remembered) | heap %.0f B/card + %.2f B/id; index %.1f B/id on disk (%d MB) |\n",
			r.Cards, *idsPerCard, r.IDs, r.HeapPerCard, r.HeapPerID, r.DiskPerID, r.DiskBytes>>20)
		fmt.Printf("| checkpoint every %d records | %.3f s each; delta %.0f KB, new segments %.0f KB; base %d MB |\n",
			*cpRecords, r.CheckpointSeconds, r.CheckpointDeltaBytes/1024, r.CheckpointSegmentBytes/1024, r.BaseBytes>>20)
		fmt.Printf("| restore on the same machine (base decoded, index opened) | %.2f s |\n", r.RestoreSeconds)
		if *emptyDisk {
			fmt.Printf("| restore on an empty disk (pieces and segments from the object store) | %.2f s |\n", r.EmptyDiskSeconds)
		}
		fmt.Printf("| fold with the index | new records %.0f/s (%.4f lookups each); re-sent records %.0f/s (%.2f lookups each) |\n",
			r.NewPerSec, r.LookupsPerNew, r.HitPerSec, r.LookupsHit)
		if *baseline {
			fmt.Printf("| fold of new records, every id in memory (same run) | %.0f/s: the index's rate is %.0f%% of it |\n", r.MemPerSec, 100*r.NewPerSec/r.MemPerSec)
		}
		return
	}
	if *clusterRun {
		ccfg := bench.ClusterConfig{Dir: cfg.DataDir, Cards: min(cfg.Cards, 2000), Records: cfg.IngestRecords, Rounds: *clusterRounds, Kills: *clusterKills,
			Batch: cfg.BatchRecords, Workers: cfg.Workers, Log: os.Stderr,
			Progress: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }}
		_ = os.RemoveAll(cfg.DataDir)
		bin, err := bench.NATSServer(context.Background(), *natsServer, cfg.DataDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		ccfg.NATSServer = bin
		r, err := bench.Cluster(context.Background(), ccfg)
		if r != nil {
			r.Print(os.Stdout, ccfg)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *webhooksRun {
		r, err := bench.Webhooks(context.Background(), bench.WebhookConfig{Dir: cfg.DataDir, Rate: *webhookRate, For: *webhookFor, Burst: *webhookBurst, Log: os.Stderr})
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Printf("machine: %d cores (GOMAXPROCS %d), %s\n\n| figure | value |\n|---|---|\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
		r.Print(os.Stdout)
		return
	}
	if *replay {
		parts := cfg.Partitions
		if parts == 0 {
			parts = broker.DefaultTopology.Partitions // a new log's
		}
		r := bench.Replay(cfg.Cards, *records, parts, os.Stderr)
		fmt.Printf("| replay from scratch: %d cards, %d records, %d partitions | %.1f s (%.0f records/s) |\n", r.Cards, r.Records, r.Partitions, r.Seconds, r.RecordsPerSec)
		fmt.Printf("| projector memory per card at %d cards (heap in use / cards, records' ids included) | %.0f bytes |\n", r.Cards, r.BytesPerCard)
		return
	}
	_ = os.RemoveAll(cfg.DataDir)
	if err := bench.DropDatabase(context.Background(), cfg.ClickHouse); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	rep, err := bench.Run(context.Background(), cfg)
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	writeHeap("end")
	rep.Print(os.Stdout, cfg)
}
