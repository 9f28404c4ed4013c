// Package bench is the load harness behind `make bench`: it runs the
// all-in-one pipeline (embedded JetStream with fsync before ack, local
// ClickHouse), measures the broker's own ceiling for a one-message-per-record
// design in the same run, then drives the pipeline and reports each figure
// as an absolute number and as a ratio to that baseline.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/app"
	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
	"github.com/cardmeter/cardmeter/pkg/projector"
	"github.com/cardmeter/cardmeter/pkg/sink"
)

// Config sizes a run.
type Config struct {
	DataDir    string
	ClickHouse sink.ClickHouseConfig
	Cards      int           // fleet size
	Partitions int           // of the log; 0: the default for a new log
	SinkFlush  time.Duration // the sink's flush interval; 0: its default
	// CheckpointInterval is the projector's longest time between
	// checkpoints; 0: its default
	CheckpointInterval time.Duration
	Accounts           int           // accounts the fleet spreads over
	IngestRecords      int           // records per format for the ingest figure
	BatchRecords       int           // records per HTTP batch
	Workers            int           // concurrent HTTP clients
	BaselineMsgs       int           // messages of the raw JetStream baseline
	E2E                time.Duration // how long the end-to-end run is sustained
	StopSamples        int           // stop latency samples
	StopLoad           int           // background CDRs/s during the stop latency run
	Log                io.Writer     // progress lines
	Formats            []string      // the order the ingest formats are measured in; default csv, ndjson
	// Phase, when set, is called as each measured phase starts ("ingest-csv",
	// "ingest-ndjson", "e2e", "stop") and the function it returns as it
	// ends: the command uses it for a CPU profile per phase.
	Phase func(name string) (end func())
	// Settled, when set, is called once the fleet is loaded and settled,
	// before the first figure (the command writes a heap profile there).
	Settled func()
}

func (c *Config) phase(name string) func() {
	if c.Phase == nil {
		return func() {}
	}
	return c.Phase(name)
}

// Report holds the figures.
type Report struct {
	BaselineMsgsPerSec float64
	IngestCSV          float64 // records/s accepted with 2xx
	IngestNDJSON       float64
	E2ERate            float64 // records/s ingested and in ClickHouse
	E2ESeconds         float64
	// CPU per record of the end-to-end run, until ClickHouse had them all
	E2ECPUSelf, E2ECPUClickHouse time.Duration
	Lag                          []LagSample
	SinkRowsPerSec               float64
	// the sink's inserts into usage_records during the end-to-end run
	SinkBlocks, SinkBlockRows float64
	// the projector's checkpoints during the end-to-end run: how many,
	// and their bytes (pieces and index segments, merges included)
	Checkpoints, CheckpointBytes float64
	E2ERecords                   int64 // records posted in the end-to-end run
	StopP50, StopP99             time.Duration
	StopMax                      time.Duration
	SendP50, SendP99             time.Duration // from sending the request (an upper bound)
	SendMax                      time.Duration
	StopSamples                  int
}

// LagSample is the backlog at one moment of the end-to-end run.
type LagSample struct {
	At              float64 // seconds since the start of the run
	ProjectorBehind uint64  // log messages not yet applied
	SinkRows        uint64  // usage rows in ClickHouse
}

type fleet struct {
	iccids   []string
	accounts []string
}

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// Run runs every figure in turn.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	rep := &Report{}
	start := time.Now()
	cfg.logf("fleet: %d cards over %d accounts, written to the log before the pipeline starts", cfg.Cards, cfg.Accounts)
	fl, err := provision(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p, err := app.Start(ctx, app.Config{DataDir: cfg.DataDir, NATSPort: -1, HTTPAddr: "127.0.0.1:0", Partitions: cfg.Partitions,
		ManualClock: true, ClockStart: time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC), ClickHouse: cfg.ClickHouse,
		Sink: sink.Config{FlushInterval: cfg.SinkFlush}, Projector: projector.Config{CheckpointInterval: cfg.CheckpointInterval}}, zap.NewNop()) // the sink as deployed unless told: its default block rows and interval
	if err != nil {
		return nil, err
	}
	defer p.Stop()
	// the projector folds the fleet from the log, ingest loaded it from
	// the directory at start
	if err := waitFor(ctx, 10*time.Minute, func() bool {
		resp, err := http.Get(p.URL + "/v1/cards/" + fl.iccids[len(fl.iccids)-1])
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}); err != nil {
		return nil, fmt.Errorf("the pipeline did not load the fleet: %w", err)
	}
	cfg.logf("  fleet loaded in %s", time.Since(start).Round(time.Second))

	// let the projector and the sink digest the provisioning first (a
	// provisioned event per card), so that what follows has the machine
	conn, err := sink.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	settle(func() uint64 {
		var n uint64
		_ = conn.QueryRow(ctx, "SELECT count() FROM card_events").Scan(&n)
		return n
	}, p.Projector.Lag)
	defer conn.Close()
	// quiet waits until the pipeline has digested what came before, so
	// that a figure does not pay for the previous one's backlog
	quiet := func() {
		settle(func() uint64 {
			var n uint64
			_ = conn.QueryRow(ctx, "SELECT count() FROM usage_records").Scan(&n)
			return n
		}, p.Projector.Lag)
	}
	cfg.logf("  fleet settled in %s", time.Since(start).Round(time.Second))
	if cfg.Settled != nil {
		cfg.Settled()
	}

	cfg.logf("baseline: %d messages of 200 bytes, one per record, async publish", cfg.BaselineMsgs)
	if rep.BaselineMsgsPerSec, err = baseline(ctx, p.JS, cfg.BaselineMsgs); err != nil {
		return nil, err
	}
	cfg.logf("  %.0f msgs/s", rep.BaselineMsgsPerSec)

	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	formats := cfg.Formats
	if len(formats) == 0 {
		formats = []string{"csv", "ndjson"}
	}
	// warm up: the first batches of a fresh process run slow (heap growth,
	// new stream blocks, connections); measure the steady state
	cfg.logf("warm-up: %d records", cfg.IngestRecords/5)
	if _, err := ingest(ctx, p.URL, "csv", makeBodies(fl, cfg, "csv", cfg.IngestRecords/5, now, 50), cfg.Workers, nil); err != nil {
		return nil, err
	}
	for i, format := range formats {
		bodies := makeBodies(fl, cfg, format, cfg.IngestRecords, now, uint64(60+i)) // new record ids for each
		quiet()
		cfg.logf("ingest %s: %d records in batches of %d, %d workers", format, cfg.IngestRecords, cfg.BatchRecords, cfg.Workers)
		end := cfg.phase("ingest-" + format)
		cpu0 := sampleCPU()
		rate, err := ingest(ctx, p.URL, format, bodies, cfg.Workers, nil)
		self, ch := cpu0.perRecord(sampleCPU(), int64(cfg.IngestRecords))
		end()
		if err != nil {
			return nil, err
		}
		cfg.logf("  %.0f records/s (CPU per record during the phase: %s in this process, %s in ClickHouse)", rate, self, ch)
		if format == "csv" {
			rep.IngestCSV = rate
		} else {
			rep.IngestNDJSON = rate
		}
	}
	end := cfg.phase("e2e")
	err = e2e(ctx, p, fl, cfg, now, rep)
	end()
	if err != nil {
		return nil, err
	}
	end = cfg.phase("stop")
	err = stopLatency(ctx, p, fl, cfg, now, rep)
	end()
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// publishAsync publishes without waiting, waiting only while the client
// holds too many unacknowledged messages.
func publishAsync(js jetstream.JetStream, subject string, data []byte) error {
	for {
		_, err := js.PublishAsync(subject, data)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return err
		}
	}
}

// baseline publishes n 200-byte messages to a stream of its own on the same
// server, asynchronously, and returns messages acknowledged per second.
func baseline(ctx context.Context, js jetstream.JetStream, n int) (float64, error) {
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.Background(), "BENCH") //nolint:errcheck
	payload := bytes.Repeat([]byte("x"), 200)
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := publishAsync(js, "bench.cdr", payload); err != nil {
			return 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("baseline: acks did not come")
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func iccidOf(i int) string {
	p := fmt.Sprintf("8986%015d", i)
	return p + string(cdr.LuhnDigit(p))
}

// provision writes the plans and the fleet's provisioning events to the
// log and the directory, as the API would, before the pipeline starts: on
// an embedded server of its own over the same files that acknowledges
// without waiting for each fsync (a million cards one fsync at a time take
// minutes here), then shut down cleanly, which writes everything to disk.
// The pipeline then starts on these files with fsync before every ack.
func provision(ctx context.Context, cfg Config) (*fleet, error) {
	srv, err := broker.StartEmbedded(broker.EmbeddedConfig{StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Port: -1, NoSync: true}, zap.NewNop())
	if err != nil {
		return nil, err
	}
	defer srv.WaitForShutdown()
	defer srv.Shutdown()
	nc, err := broker.Connect(srv.ClientURL(), "bench-provision", zap.NewNop())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, err
	}
	topo := broker.DefaultTopology
	topo.Partitions = cfg.Partitions
	if topo, err = broker.Ensure(ctx, js, topo); err != nil {
		return nil, err
	}
	return writeFleet(ctx, js, topo, cfg)
}

// writeFleet writes the plans and cfg.Cards cards into the log and the
// directory, as the API would have, without waiting for the projector.
func writeFleet(ctx context.Context, js jetstream.JetStream, topo broker.Topology, cfg Config) (*fleet, error) {
	dirSubject := "$KV." + broker.BucketDir + "."
	fl := &fleet{}
	for i := 0; i < cfg.Accounts; i++ {
		fl.accounts = append(fl.accounts, fmt.Sprint("acct", i))
	}
	at := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC).Unix()
	plan := card.PlanChanged{PlanID: "bench", QuotaBytes: 1 << 40, TimeZone: card.DefaultTimeZone}
	tiny := card.PlanChanged{PlanID: "tiny", QuotaBytes: 1000, TimeZone: card.DefaultTimeZone}
	for _, pl := range []card.PlanChanged{plan, tiny} {
		b, _ := jsonMarshal(card.Input{Type: card.TypePlanChanged, ID: "plan-" + pl.PlanID, At: at, Plan: &pl})
		for part := 0; part < topo.Partitions; part++ {
			if err := publishAsync(js, broker.BillingSubject(part), b); err != nil {
				return nil, err
			}
		}
		pb, _ := jsonMarshal(pl)
		if err := publishAsync(js, dirSubject+"plan."+pl.PlanID, pb); err != nil {
			return nil, err
		}
	}
	fl.iccids = make([]string, cfg.Cards)
	for i := 0; i < cfg.Cards; i++ {
		iccid := iccidOf(i)
		fl.iccids[i] = iccid
		acct := fl.accounts[i%len(fl.accounts)]
		cp := card.CardProvisioned{ICCID: iccid, AccountID: acct, PlanID: "bench", Carrier: "cmcc", AutoStopOverQuota: true}
		b, _ := jsonMarshal(card.Input{Type: card.TypeCardProvisioned, ID: "card-" + iccid, At: at, Card: &cp})
		if err := publishAsync(js, broker.BillingSubject(broker.Partition(acct, topo.Partitions)), b); err != nil {
			return nil, err
		}
		eb, _ := jsonMarshal(map[string]string{"iccid": iccid, "account_id": acct, "plan_id": "bench", "carrier": "cmcc"})
		if err := publishAsync(js, dirSubject+"card."+iccid, eb); err != nil {
			return nil, err
		}
		if (i+1)%200000 == 0 {
			cfg.logf("  %d cards written", i+1)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Minute):
		return nil, errors.New("provisioning: acks did not come")
	}
	return fl, nil
}

func waitFor(ctx context.Context, d time.Duration, f func() bool) error {
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not within %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// makeBodies makes n records in batches: sizes like real CDRs, 2% re-sent
// records and 3% late ones (a few days old). It formats with appends and
// caches the time strings, since it runs on the machine it measures.
func makeBodies(fl *fleet, cfg Config, format string, n int, now time.Time, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, 7))
	times := map[int64]string{}
	rfc3339 := func(t time.Time) string {
		s, ok := times[t.Unix()]
		if !ok {
			s = t.Format(time.RFC3339)
			times[t.Unix()] = s
		}
		return s
	}
	prefix := "s" + strconv.FormatUint(seed, 10) + "-"
	var out [][]byte
	var buf []byte
	start := func() {
		buf = make([]byte, 0, cfg.BatchRecords*160)
		if format == "csv" {
			buf = append(buf, "record_id,iccid,start_time,end_time,bytes_up,bytes_down,apn,rat\n"...)
		}
	}
	start()
	inBatch := 0
	for i := 0; i < n; i++ {
		id := i
		if i > 100 && r.IntN(100) < 2 {
			id = r.IntN(i) // a re-sent record
		}
		iccid := fl.iccids[id%len(fl.iccids)]
		st := now.Add(-time.Duration(10+id%3600) * time.Second)
		if r.IntN(100) < 3 {
			st = st.Add(-72 * time.Hour) // late
		}
		en := st.Add(time.Duration(60+id%600) * time.Second)
		if en.After(now) {
			en = now
		}
		up, down := int64(200+id%5000), int64(1000+id%50000)
		if format == "csv" {
			buf = append(buf, prefix...)
			buf = strconv.AppendInt(buf, int64(id), 10)
			buf = append(buf, ',')
			buf = append(buf, iccid...)
			buf = append(buf, ',')
			buf = append(buf, rfc3339(st)...)
			buf = append(buf, ',')
			buf = append(buf, rfc3339(en)...)
			buf = append(buf, ',')
			buf = strconv.AppendInt(buf, up, 10)
			buf = append(buf, ',')
			buf = strconv.AppendInt(buf, down, 10)
			buf = append(buf, ",cmiot,NB-IoT\n"...)
		} else {
			buf = append(buf, `{"record_id":"`...)
			buf = append(buf, prefix...)
			buf = strconv.AppendInt(buf, int64(id), 10)
			buf = append(buf, `","iccid":"`...)
			buf = append(buf, iccid...)
			buf = append(buf, `","start_time":"`...)
			buf = append(buf, rfc3339(st)...)
			buf = append(buf, `","end_time":"`...)
			buf = append(buf, rfc3339(en)...)
			buf = append(buf, `","bytes_up":`...)
			buf = strconv.AppendInt(buf, up, 10)
			buf = append(buf, `,"bytes_down":`...)
			buf = strconv.AppendInt(buf, down, 10)
			buf = append(buf, `,"apn":"cmiot","rat":"NB-IoT"}`+"\n"...)
		}
		if inBatch++; inBatch == cfg.BatchRecords {
			out = append(out, buf)
			start()
			inBatch = 0
		}
	}
	if inBatch > 0 {
		out = append(out, buf)
	}
	return out
}

// ingest posts the bodies with workers and returns records accepted (2xx)
// per second.
func ingest(ctx context.Context, url, format string, bodies [][]byte, workers int, limiter <-chan time.Time) (float64, error) {
	ctype := map[string]string{"csv": "text/csv", "ndjson": "application/x-ndjson"}[format]
	var next atomic.Int64
	var accepted atomic.Int64
	var firstErr atomic.Value
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(bodies) || ctx.Err() != nil {
					return
				}
				if limiter != nil {
					<-limiter
				}
				resp, err := client.Post(url+"/v1/usage?carrier=cmcc&wait=false", ctype, bytes.NewReader(bodies[i]))
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				var res struct{ Stored int }
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 && resp.StatusCode != 422 {
					firstErr.CompareAndSwap(nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b))
					return
				}
				_ = jsonUnmarshal(b, &res)
				accepted.Add(int64(res.Stored))
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(accepted.Load()) / time.Since(start).Seconds(), nil
}

// e2e ingests at full speed for cfg.E2E and measures until every record is
// in ClickHouse, sampling the backlog every few seconds.
func e2e(ctx context.Context, p *app.Pipeline, fl *fleet, cfg Config, now time.Time, rep *Report) error {
	conn, err := sink.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	rows := func() uint64 {
		var n uint64
		_ = conn.QueryRow(ctx, "SELECT count() FROM usage_records").Scan(&n)
		return n
	}
	behind := func() uint64 { return p.Projector.Lag() }
	// let the ingest figure's records settle first
	before := settle(rows, behind)
	blocks0, blockRows0 := sinkBlocks(p)
	cps0, cpBytes0 := checkpoints(p)
	cpu0 := sampleCPU()
	cfg.logf("end to end: ingest for %s, then until ClickHouse has every record", cfg.E2E)
	start := time.Now()
	stopSampling := make(chan struct{})
	var lagMu sync.Mutex
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				lagMu.Lock()
				rep.Lag = append(rep.Lag, LagSample{At: time.Since(start).Seconds(), ProjectorBehind: behind(), SinkRows: rows() - before})
				lagMu.Unlock()
			case <-stopSampling:
				return
			}
		}
	}()
	var total int64
	seed := uint64(100)
	for time.Since(start) < cfg.E2E {
		bodies := makeBodies(fl, cfg, "csv", cfg.BatchRecords*cfg.Workers*4, now, seed)
		seed++
		if _, err := ingest(ctx, p.URL, "csv", bodies, cfg.Workers, nil); err != nil {
			close(stopSampling)
			return err
		}
		total += int64(cfg.BatchRecords * cfg.Workers * 4)
	}
	ingested := time.Since(start)
	// every accepted record lands in ClickHouse (duplicates of earlier
	// records are dropped by the projector: count what the projector accepted)
	sinkStart := time.Now()
	last := settle(rows, behind)
	close(stopSampling)
	elapsed := time.Since(start) - 3*time.Second // the stability wait
	inCH := last - before
	rep.E2ERate = float64(inCH) / elapsed.Seconds()
	rep.E2ESeconds = elapsed.Seconds()
	rep.SinkRowsPerSec = float64(inCH) / (ingested.Seconds() + time.Since(sinkStart).Seconds() - 3)
	rep.E2ECPUSelf, rep.E2ECPUClickHouse = cpu0.perRecord(sampleCPU(), total)
	blocks1, blockRows1 := sinkBlocks(p)
	rep.SinkBlocks, rep.SinkBlockRows = blocks1-blocks0, blockRows1-blockRows0
	cps1, cpBytes1 := checkpoints(p)
	rep.Checkpoints, rep.CheckpointBytes, rep.E2ERecords = cps1-cps0, cpBytes1-cpBytes0, total
	cfg.logf("  %d records posted, %d rows in ClickHouse in %.1f s: %.0f records/s end to end", total, inCH, elapsed.Seconds(), rep.E2ERate)
	cfg.logf("  CPU per record posted: %s in this process (pipeline and load generator), %s in ClickHouse", rep.E2ECPUSelf, rep.E2ECPUClickHouse)
	return nil
}

// sinkBlocks reads the sink's inserts into usage_records so far, and
// their rows, from its block-size histogram.
func sinkBlocks(p *app.Pipeline) (blocks, rows float64) {
	return metricSum(p, "cardmeter_sink_block_rows", "table", "usage_records")
}

// checkpoints reads the projector's checkpoints so far, and their bytes.
func checkpoints(p *app.Pipeline) (n, bytes float64) {
	n, _ = metricSum(p, "cardmeter_projector_checkpoint_seconds", "", "")
	_, bytes = metricSum(p, "cardmeter_projector_checkpoint_bytes_total", "", "")
	return n, bytes
}

// metricSum reads a metric's samples whose label is value (any, when the
// label is ""): a histogram's count and sum, or a counter's sum (as sum).
func metricSum(p *app.Pipeline, name, label, value string) (count, sum float64) {
	mfs, err := p.Metrics.Gather()
	if err != nil {
		return 0, 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == label && l.GetValue() == value
			}
			if !match {
				continue
			}
			if h := m.GetHistogram(); h != nil {
				count += float64(h.GetSampleCount())
				sum += h.GetSampleSum()
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
		}
	}
	return count, sum
}

// settle waits until the projector is caught up and the row count has not
// moved for 3 s, and returns the count.
func settle(rows, behind func() uint64) uint64 {
	var last uint64
	for stable := 0; stable < 6; {
		time.Sleep(500 * time.Millisecond)
		n := rows()
		if n == last && behind() == 0 {
			stable++
		} else {
			stable = 0
		}
		last = n
	}
	return last
}

// stopLatency measures, under background load, the time from the 2xx of a
// batch holding a crossing record to the stopped event on the output stream.
func stopLatency(ctx context.Context, p *app.Pipeline, fl *fleet, cfg Config, now time.Time, rep *Report) error {
	stops := make(chan string, cfg.StopSamples)
	sub, err := p.NC.Subscribe("cardmeter.events.card.stopped.>", func(m *nats.Msg) {
		stops <- m.Subject[len("cardmeter.events.card.stopped."):]
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe() //nolint:errcheck
	// cards on the tiny plan, one per sample
	kv, err := p.JS.KeyValue(ctx, broker.BucketDir)
	if err != nil {
		return err
	}
	at := now.Unix()
	var tiny []string
	for i := 0; i < cfg.StopSamples; i++ {
		iccid := iccidOf(cfg.Cards + 1000 + i)
		acct := fl.accounts[i%len(fl.accounts)]
		cp := card.CardProvisioned{ICCID: iccid, AccountID: acct, PlanID: "tiny", Carrier: "cmcc", AutoStopOverQuota: true}
		b, _ := jsonMarshal(card.Input{Type: card.TypeCardProvisioned, ID: "card-" + iccid, At: at, Card: &cp})
		if _, err := p.JS.Publish(ctx, broker.BillingSubject(broker.Partition(acct, p.Partitions())), b); err != nil {
			return err
		}
		eb, _ := jsonMarshal(map[string]string{"iccid": iccid, "account_id": acct, "plan_id": "tiny", "carrier": "cmcc"})
		if _, err := kv.Put(ctx, "card."+iccid, eb); err != nil {
			return err
		}
		tiny = append(tiny, iccid)
	}
	time.Sleep(time.Second) // the directory learns the cards
	// background load at cfg.StopLoad records/s, in batches of 1000
	bgCtx, bgCancel := context.WithCancel(ctx)
	defer bgCancel()
	go func() {
		per := time.Second * 1000 / time.Duration(max(cfg.StopLoad, 1))
		tick := time.NewTicker(per)
		defer tick.Stop()
		bcfg := cfg
		bcfg.BatchRecords = 1000
		bodies := makeBodies(fl, bcfg, "csv", 1000*int(cfg.E2E.Seconds()+60), now, 999)
		_, _ = ingest(bgCtx, p.URL, "csv", bodies, 2, tick.C)
	}()
	client := &http.Client{}
	var lat, fromSend []time.Duration
	for i, iccid := range tiny {
		body := fmt.Sprintf("record_id,iccid,start_time,end_time,bytes_up,bytes_down\nstop%d,%s,%s,%s,1000,1000\n", i, iccid,
			now.Add(-time.Hour).Format(time.RFC3339), now.Add(-50*time.Minute).Format(time.RFC3339))
		sent := time.Now()
		resp, err := client.Post(p.URL+"/v1/usage?carrier=cmcc&wait=false", "text/csv", bytes.NewReader([]byte(body)))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()
		t0 := time.Now()
		if resp.StatusCode != 200 {
			return fmt.Errorf("stop sample: HTTP %d", resp.StatusCode)
		}
		for got := ""; got != iccid; {
			select {
			case got = <-stops:
			case <-time.After(30 * time.Second):
				return fmt.Errorf("no stopped event for %s", iccid)
			}
		}
		lat = append(lat, time.Since(t0))
		fromSend = append(fromSend, time.Since(sent))
		time.Sleep(20 * time.Millisecond)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(fromSend, func(i, j int) bool { return fromSend[i] < fromSend[j] })
	rep.StopSamples = len(lat)
	rep.StopP50, rep.StopP99, rep.StopMax = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	rep.SendP50, rep.SendP99, rep.SendMax = fromSend[len(lat)/2], fromSend[len(lat)*99/100], fromSend[len(lat)-1]
	cfg.logf("stop latency under %d CDRs/s: from the 2xx p50 %s p99 %s max %s; from the request p50 %s p99 %s max %s",
		cfg.StopLoad, rep.StopP50, rep.StopP99, rep.StopMax, rep.SendP50, rep.SendP99, rep.SendMax)
	return nil
}

// Print writes the report, each figure with its ratio to the baseline.
func (r *Report) Print(w io.Writer, cfg Config) {
	ratio := func(v float64) string { return fmt.Sprintf("%.2f×", v/r.BaselineMsgsPerSec) }
	fmt.Fprintf(w, "machine: %d cores (GOMAXPROCS %d), %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintf(w, "fleet: %d cards, %d accounts; batches of %d records, %d HTTP workers\n\n", cfg.Cards, cfg.Accounts, cfg.BatchRecords, cfg.Workers)
	fmt.Fprintf(w, "| figure | value | ratio to baseline |\n|---|---|---|\n")
	fmt.Fprintf(w, "| baseline: raw JetStream async publish, 200 B/record, fsync before ack | %.0f msgs/s | 1.00× |\n", r.BaselineMsgsPerSec)
	fmt.Fprintf(w, "| durable ingest over HTTP, CSV | %.0f CDRs/s | %s |\n", r.IngestCSV, ratio(r.IngestCSV))
	fmt.Fprintf(w, "| durable ingest over HTTP, NDJSON | %.0f CDRs/s | %s |\n", r.IngestNDJSON, ratio(r.IngestNDJSON))
	fmt.Fprintf(w, "| end to end (ingest → projected → in ClickHouse), %.0f s | %.0f CDRs/s | %s |\n", r.E2ESeconds, r.E2ERate, ratio(r.E2ERate))
	fmt.Fprintf(w, "| sink insert rate | %.0f rows/s | %s |\n", r.SinkRowsPerSec, ratio(r.SinkRowsPerSec))
	if r.SinkBlocks > 0 {
		fmt.Fprintf(w, "| sink inserts into usage_records end to end, rows per insert (mean) | %.0f, %.0f | |\n", r.SinkBlocks, r.SinkBlockRows/r.SinkBlocks)
	}
	if r.Checkpoints > 0 && r.E2ERecords > 0 {
		fmt.Fprintf(w, "| projector checkpoints end to end, bytes stored per record posted | %.0f, %.1f | |\n", r.Checkpoints, r.CheckpointBytes/float64(r.E2ERecords))
	}
	fmt.Fprintf(w, "| CPU per record end to end: this process (pipeline and load generator) / ClickHouse | %s / %s | |\n", r.E2ECPUSelf, r.E2ECPUClickHouse)
	fmt.Fprintf(w, "| stop latency from the 2xx to the stopped event, %d samples under %d CDRs/s | p50 %s, p99 %s, max %s | |\n", r.StopSamples, cfg.StopLoad,
		r.StopP50.Round(time.Microsecond), r.StopP99.Round(time.Microsecond), r.StopMax.Round(time.Microsecond))
	fmt.Fprintf(w, "| the same from sending the request | p50 %s, p99 %s, max %s | |\n\n",
		r.SendP50.Round(time.Microsecond), r.SendP99.Round(time.Microsecond), r.SendMax.Round(time.Microsecond))
	fmt.Fprintf(w, "backlog during the end-to-end run:\n\n| s | log messages the projector is behind | rows in ClickHouse |\n|---|---|---|\n")
	for _, l := range r.Lag {
		fmt.Fprintf(w, "| %.0f | %d | %d |\n", l.At, l.ProjectorBehind, l.SinkRows)
	}
}

// DropDatabase empties the bench's ClickHouse database.
func DropDatabase(ctx context.Context, ch sink.ClickHouseConfig) error {
	conn, err := sink.Open(ctx, ch)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ch.Database)
}
