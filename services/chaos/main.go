// Command chaos is the fault campaign behind `make chaos` (see pkg/chaos):
// it builds the all-in-one, runs it on its own ClickHouse, kills it at
// random moments under load and checks nothing acknowledged was lost or
// counted twice. Exit status: 0 pass, 1 a check failed, 2 could not run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/chaos"
)

func main() {
	cfg := chaos.DefaultConfig
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long faults are injected while writing")
	flag.IntVar(&cfg.Kills, "kills", cfg.Kills, "kill points (kill -9, SIGTERM, kill -9 during start-up)")
	flag.IntVar(&cfg.CHStops, "clickhouse-stops", cfg.CHStops, "ClickHouse stops and starts")
	flag.Float64Var(&cfg.Rate, "rate", cfg.Rate, "target records per second, all writers together")
	flag.IntVar(&cfg.Writers, "writers", cfg.Writers, "concurrent writers (one carrier each)")
	flag.IntVar(&cfg.Batch, "batch", cfg.Batch, "records per batch")
	flag.IntVar(&cfg.Cards, "cards", cfg.Cards, "cards")
	flag.IntVar(&cfg.Accounts, "accounts", cfg.Accounts, "accounts")
	flag.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the fault plan and the records")
	flag.StringVar(&cfg.WorkDir, "workdir", cfg.WorkDir, "folder for data and logs (removed first)")
	flag.StringVar(&cfg.Binary, "binary", "", "the cardmeter binary (default: built into the workdir's parent)")
	flag.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "a restart not ready by then fails the campaign")
	flag.DurationVar(&cfg.CheckpointInterval, "checkpoint-interval", cfg.CheckpointInterval, "the projector's checkpoint interval")
	handover := flag.Int("handover-kills", 0, "instead: the hand-over campaign, two projectors sharing the partitions, one killed (kill -9) this many times under load")
	leaseTTL := flag.Duration("lease-ttl", 10*time.Second, "with -handover-kills: the partition leases' time to live")
	partitions := flag.Int("partitions", 8, "with -handover-kills: partitions of the log")
	chAddr := flag.String("clickhouse-addr", "127.0.0.1:19000", "with -handover-kills: ClickHouse (the local one: make deps starts it)")
	flag.Parse()

	log, err := zap.NewDevelopment(zap.IncreaseLevel(zap.InfoLevel), zap.AddStacktrace(zap.DPanicLevel))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg.Log = log
	// Bounded: the campaign, plus set-up, drain, catch-up and checks.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration+15*time.Minute)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	if cfg.Binary == "" {
		dir := filepath.Join(filepath.Dir(filepath.Clean(cfg.WorkDir)), "chaos-bin")
		log.Info("building the all-in-one", zap.String("dir", dir))
		if cfg.Binary, err = chaos.Build(ctx, dir); err != nil {
			log.Error("build failed", zap.Error(err))
			os.Exit(2)
		}
	}
	if *handover > 0 {
		os.Exit(runHandover(ctx, cfg, *handover, *leaseTTL, *partitions, *chAddr, log))
	}
	rep, err := chaos.Run(ctx, cfg)
	if rep != nil {
		rep.Print(os.Stdout)
	}
	switch {
	case err != nil:
		log.Error("the campaign could not run", zap.Error(err))
		os.Exit(2)
	case rep.Failed():
		os.Exit(1)
	}
}

// runHandover runs the hand-over campaign and prints its report.
func runHandover(ctx context.Context, cfg chaos.Config, kills int, ttl time.Duration, partitions int, chAddr string, log *zap.Logger) int {
	pbin, err := chaos.BuildProjector(ctx, filepath.Dir(cfg.Binary))
	if err != nil {
		log.Error("build failed", zap.Error(err))
		return 2
	}
	_ = os.RemoveAll(cfg.WorkDir)
	rep, err := chaos.RunHandover(ctx, chaos.HandoverConfig{Kills: kills, Seed: cfg.Seed, PairConfig: chaos.PairConfig{
		Binary: cfg.Binary, ProjectorBinary: pbin, Dir: cfg.WorkDir, ClickHouseAddr: chAddr, ClickHouseDB: "cardmeter_handover",
		Partitions: partitions, LeaseTTL: ttl, Cards: 64, Log: log}})
	if rep != nil {
		rep.Print(os.Stdout)
	}
	switch {
	case err != nil:
		log.Error("the campaign could not run", zap.Error(err))
		return 2
	case rep.Failed():
		return 1
	}
	return 0
}
