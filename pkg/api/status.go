package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/cardmeter/cardmeter/pkg/status"
)

// StatusResponse is GET /v1/status: the pipeline as its running roles
// last reported (every 10 s; a report a minute old is gone). A figure no
// role reports is null, not 0: nothing is known of it.
type StatusResponse struct {
	At                time.Time        `json:"at"`
	Healthy           bool             `json:"healthy"`
	Problems          []string         `json:"problems"`
	ProjectorLag      *uint64          `json:"projector_lag_messages"`
	ProjectorLagSecs  *float64         `json:"projector_lag_seconds"`
	SinkPending       *uint64          `json:"sink_pending_messages"`
	ClickHouseUp      *bool            `json:"clickhouse_up"`
	IngestPerSecond   *float64         `json:"ingest_records_per_second"`
	RejectedPerSecond *float64         `json:"rejected_records_per_second"`
	Partitions        []PartitionState `json:"partitions"`
	Instances         []status.Report  `json:"instances"`
}

// PartitionState is a partition and the projector folding it.
type PartitionState struct {
	status.Partition
	Owner string `json:"owner,omitempty"`
}

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) error {
	reports, err := status.Read(r.Context(), s.js)
	if err != nil {
		return fmt.Errorf("%w: reading the status reports: %v", errUnavailable, err)
	}
	resp := Summarize(reports, s.cfg.Partitions)
	resp.At = time.Now().UTC()
	return ok(w, resp)
}

// Summarize adds the reports up: the pipeline's figures, each partition's
// owner, and what needs a look.
func Summarize(reports []status.Report, partitions int) StatusResponse {
	resp := StatusResponse{Problems: []string{}, Partitions: []PartitionState{}, Instances: reports}
	if resp.Instances == nil {
		resp.Instances = []status.Report{}
	}
	byID := map[int]PartitionState{}
	at := map[string]time.Time{} // when each projector reported
	projectors, sinks := 0, 0
	var lag, pending uint64
	var lagSecs, in, rej float64
	ingests := 0
	up := false
	for _, r := range reports {
		if !r.Ready {
			resp.Problems = append(resp.Problems, fmt.Sprintf("%s %s: %s", r.Role, r.Instance, r.Detail))
		}
		if p := r.Projector; p != nil {
			projectors++
			lag += p.LagMessages
			lagSecs = max(lagSecs, p.LagSeconds)
			for _, pt := range p.Partitions {
				// during a hand-over two may say they hold it: the newer
				// report tells
				if old, ok := byID[pt.ID]; !ok || r.At.After(at[old.Owner]) {
					byID[pt.ID] = PartitionState{Partition: pt, Owner: r.Instance}
				}
			}
			at[r.Instance] = r.At
		}
		if sk := r.Sink; sk != nil {
			sinks++
			pending += sk.Pending
			up = up || sk.ClickHouseUp
		}
		if i := r.Ingest; i != nil {
			ingests++
			in += i.RecordsPerSecond
			rej += i.RejectedPerSecond
		}
	}
	if projectors > 0 {
		resp.ProjectorLag, resp.ProjectorLagSecs = &lag, &lagSecs
		for id := 0; id < partitions; id++ {
			ps, ok := byID[id]
			if !ok {
				resp.Problems = append(resp.Problems, fmt.Sprintf("partition %d: no projector reports holding it", id))
				ps = PartitionState{Partition: status.Partition{ID: id}}
			}
			resp.Partitions = append(resp.Partitions, ps)
		}
	} else {
		resp.Problems = append(resp.Problems, "no projector is reporting")
	}
	if sinks > 0 {
		resp.SinkPending, resp.ClickHouseUp = &pending, &up
		if !up {
			resp.Problems = append(resp.Problems, "no sink reaches ClickHouse")
		}
	} else {
		resp.Problems = append(resp.Problems, "no sink is reporting")
	}
	if ingests > 0 {
		resp.IngestPerSecond, resp.RejectedPerSecond = &in, &rej
	}
	resp.Healthy = len(resp.Problems) == 0
	return resp
}
