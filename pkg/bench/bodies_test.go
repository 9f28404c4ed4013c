package bench

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// The load generator's CSV and NDJSON bodies hold the same valid records,
// in batches of the configured size, with re-sent and late ones.
func TestMakeBodies(t *testing.T) {
	fl := &fleet{iccids: []string{iccidOf(0), iccidOf(1), iccidOf(2)}}
	cfg := Config{BatchRecords: 400}
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	read := func(format string) []cdr.Record {
		var out []cdr.Record
		bodies := makeBodies(fl, cfg, format, 1000, now, 9)
		if len(bodies) != 3 {
			t.Fatalf("%s: %d bodies for 1000 records in batches of 400", format, len(bodies))
		}
		for _, b := range bodies {
			var rd cdr.Reader
			var err error
			if format == "csv" {
				rd, err = cdr.NewCSVReader(bytes.NewReader(b), 4096)
			} else {
				rd = cdr.NewNDJSONReader(bytes.NewReader(b), 4096)
			}
			if err != nil {
				t.Fatal(err)
			}
			for {
				var rec cdr.Record
				err := rd.Next(&rec)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v", format, err)
				}
				if fe := rec.Validate(now.Unix(), cdr.Limits{MaxFutureSkew: time.Hour, MaxBytes: 1 << 40, MaxFieldLen: 256}); fe != nil {
					t.Fatalf("%s: record %s: %v", format, rec.RecordID, fe)
				}
				out = append(out, rec)
			}
		}
		return out
	}
	csv, nd := read("csv"), read("ndjson")
	if len(csv) != 1000 || len(nd) != 1000 {
		t.Fatalf("%d CSV and %d NDJSON records, want 1000 each", len(csv), len(nd))
	}
	ids := map[string]bool{}
	late := 0
	for i := range csv {
		if csv[i] != nd[i] {
			t.Fatalf("record %d differs:\n%+v\n%+v", i, csv[i], nd[i])
		}
		ids[csv[i].RecordID] = true
		if now.Unix()-csv[i].End > 48*3600 {
			late++
		}
	}
	if resent := 1000 - len(ids); resent < 5 || resent > 50 {
		t.Errorf("%d re-sent records in 1000, want about 2%%", resent)
	}
	if late < 10 || late > 60 {
		t.Errorf("%d late records in 1000, want about 3%%", late)
	}
}
