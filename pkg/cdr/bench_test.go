package cdr

import (
	"bytes"
	"fmt"
	"io"
	"testing"
)

func benchBody(format string, n int) []byte {
	var b bytes.Buffer
	if format == "csv" {
		b.WriteString("record_id,iccid,start_time,end_time,bytes_up,bytes_down,apn,rat\n")
	}
	for i := 0; i < n; i++ {
		if format == "csv" {
			fmt.Fprintf(&b, "s1-%d,89860000000000000019,2026-03-09T23:00:00Z,2026-03-09T23:10:00Z,%d,%d,cmiot,NB-IoT\n", i, 200+i%5000, 1000+i%50000)
		} else {
			fmt.Fprintf(&b, `{"record_id":"s1-%d","iccid":"89860000000000000019","start_time":"2026-03-09T23:00:00Z","end_time":"2026-03-09T23:10:00Z","bytes_up":%d,"bytes_down":%d,"apn":"cmiot","rat":"NB-IoT"}`+"\n", i, 200+i%5000, 1000+i%50000)
		}
	}
	return b.Bytes()
}

// BenchmarkParse reads 10,000-record batches; ns/op is per record.
func BenchmarkParse(b *testing.B) {
	for _, format := range []string{"csv", "ndjson"} {
		b.Run(format, func(b *testing.B) {
			body := benchBody(format, 10000)
			b.SetBytes(int64(len(body)) / 10000)
			b.ReportAllocs()
			var rec Record
			for done := 0; done < b.N; done += 10000 {
				var r Reader
				if format == "csv" {
					r, _ = NewCSVReader(bytes.NewReader(body), 1<<16)
				} else {
					r = NewNDJSONReader(bytes.NewReader(body), 1<<16)
				}
				for n := 0; n < 10000 && done+n < b.N; n++ {
					if err := r.Next(&rec); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
