package projector

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/status"
)

// collector reads the partitions this instance holds at each scrape: the
// cards by status and stop reason (their last census), how far behind
// the fold is in seconds, and each partition's checkpoint age.
type collector struct{ p *Projector }

var (
	descCards = prometheus.NewDesc("cardmeter_cards",
		"Cards by status, in the partitions this instance folds (their census, every 15 s).", []string{"status"}, nil)
	descStoppedBy = prometheus.NewDesc("cardmeter_cards_stopped",
		"Stopped cards by stop reason (a card stopped for two reasons counts under both).", []string{"reason"}, nil)
	descLagSeconds = prometheus.NewDesc("cardmeter_projector_lag_seconds",
		"How far the fold is behind the log, in seconds: while messages wait, the time since the last one folded was stored (the most over the partitions).", nil, nil)
	descCheckpointAge = prometheus.NewDesc("cardmeter_projector_checkpoint_age_seconds",
		"Seconds since the last checkpoint of a partition this instance holds was stored (restoring or retrying too).", []string{"partition"}, nil)
	descPartitions = prometheus.NewDesc("cardmeter_projector_partitions",
		"Partitions of the log (every projector says the same): held and ready should add up to it.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCards
	ch <- descStoppedBy
	ch <- descLagSeconds
	ch <- descCheckpointAge
	ch <- descPartitions
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	total := card.Census{ByReason: map[string]int{}}
	var lag float64
	for _, pt := range c.p.sorted() {
		pt.mu.Lock()
		census, held, ready, pending, stored, saved := pt.census, pt.lease != nil, pt.ready, pt.pending, pt.foldedStored, pt.checkpointAt
		pt.mu.Unlock()
		if !held {
			continue
		}
		// (the age of a held partition's checkpoint grows while it
		// restores or retries too: that is what the alert is for)
		if !saved.IsZero() {
			ch <- prometheus.MustNewConstMetric(descCheckpointAge, prometheus.GaugeValue, now.Sub(saved).Seconds(), strconv.Itoa(pt.id))
		}
		if !ready {
			continue
		}
		if census != nil {
			total = total.Add(*census)
		}
		if pending > 0 && !stored.IsZero() {
			lag = max(lag, now.Sub(stored).Seconds())
		}
	}
	ch <- prometheus.MustNewConstMetric(descCards, prometheus.GaugeValue, float64(total.InService), string(card.InService))
	ch <- prometheus.MustNewConstMetric(descCards, prometheus.GaugeValue, float64(total.Stopped), string(card.Stopped))
	ch <- prometheus.MustNewConstMetric(descCards, prometheus.GaugeValue, float64(total.Cancelled), string(card.Cancelled))
	for reason, n := range total.ByReason {
		ch <- prometheus.MustNewConstMetric(descStoppedBy, prometheus.GaugeValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, lag)
	ch <- prometheus.MustNewConstMetric(descPartitions, prometheus.GaugeValue, float64(c.p.cfg.Partitions))
}

// Status is this instance's partitions for the status bucket.
func (p *Projector) Status() status.Projector {
	now := time.Now()
	st := status.Projector{LagMessages: p.Lag(), Partitions: []status.Partition{}}
	for _, pt := range p.sorted() {
		pt.mu.Lock()
		held, ready, failure, census, pending, stored, saved := pt.lease != nil, pt.ready, pt.failure, pt.census, pt.pending, pt.foldedStored, pt.checkpointAt
		pt.mu.Unlock()
		if !held {
			continue
		}
		ps := status.Partition{ID: pt.id, Ready: ready, LagMessages: pending}
		if failure != nil {
			ps.Error = failure.Error()
		}
		if census != nil {
			n := census.InService + census.Stopped + census.Cancelled
			ps.Cards = &n
		}
		if !saved.IsZero() {
			age := now.Sub(saved).Seconds()
			ps.CheckpointAgeSeconds = &age
		}
		if pending > 0 && !stored.IsZero() {
			ps.LagSeconds = max(0, now.Sub(stored).Seconds())
			st.LagSeconds = max(st.LagSeconds, ps.LagSeconds)
		}
		st.Partitions = append(st.Partitions, ps)
	}
	return st
}
