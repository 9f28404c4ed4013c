package api

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/status"
)

// The reports add up: a partition two projectors say they hold (a
// hand-over) is the newer report's; one nobody holds is a problem; a
// figure no role reports is null, not 0.
func TestSummarize(t *testing.T) {
	now := time.Now()
	reports := []status.Report{
		{Role: "projector", Instance: "old", At: now.Add(-5 * time.Second), Ready: true,
			Projector: &status.Projector{LagMessages: 3, Partitions: []status.Partition{{ID: 0, Ready: true}, {ID: 1, Ready: true}}}},
		{Role: "projector", Instance: "new", At: now, Ready: true,
			Projector: &status.Projector{LagMessages: 4, Partitions: []status.Partition{{ID: 1, Ready: false, Error: "restoring"}}}},
	}
	st := Summarize(reports, 3)
	owners := fmt.Sprint(st.Partitions[0].Owner, st.Partitions[1].Owner, st.Partitions[2].Owner)
	if owners != "oldnew" || *st.ProjectorLag != 7 || st.SinkPending != nil || st.ClickHouseUp != nil || st.IngestPerSecond != nil || st.Healthy {
		t.Fatalf("summary: owners %q, %+v", owners, st)
	}
	problems := strings.Join(st.Problems, "; ")
	if !strings.Contains(problems, "partition 2: no projector reports holding it") || !strings.Contains(problems, "no sink is reporting") {
		t.Fatalf("problems: %s", problems)
	}
	st = Summarize(append(reports[:1], status.Report{Role: "sink", Instance: "s", At: now, Ready: false, Detail: "clickhouse: refused",
		Sink: &status.Sink{Pending: 9}}), 2)
	if st.ClickHouseUp == nil || *st.ClickHouseUp || *st.SinkPending != 9 || !strings.Contains(strings.Join(st.Problems, "; "), "sink s: clickhouse: refused") {
		t.Fatalf("a sink that cannot write: %+v", st)
	}
}
