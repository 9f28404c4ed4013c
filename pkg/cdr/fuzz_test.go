package cdr

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"testing"
)

// The parsers take outside input: whatever the bytes, they never panic,
// every record error names a line, and a record they return re-encodes and
// decodes to itself. Seeds are in testdata/fuzz/<target>/.
func fuzzReader(t *testing.T, r Reader) {
	for i := 0; i < 10000; i++ {
		var rec Record
		err := r.Next(&rec)
		if err == io.EOF {
			return
		}
		var re *RecordError
		if errors.As(err, &re) {
			if re.Line < 1 || re.Reason == "" {
				t.Fatalf("record error without line or reason: %+v", re)
			}
			continue
		}
		var be *BatchError
		if errors.As(err, &be) {
			return
		}
		if err != nil {
			t.Fatalf("an error of no documented kind: %T %v", err, err)
		}
		var h ChunkHeader
		got, derr := DecodeChunk(AppendChunk(nil, ChunkHeader{Carrier: "c"}, []Record{rec}), &h, nil)
		if derr != nil || len(got) != 1 || got[0] != rec {
			t.Fatalf("record %+v does not survive the chunk codec: %v", rec, derr)
		}
	}
}

func FuzzCSVReader(f *testing.F) {
	f.Add([]byte("record_id,iccid,start_time,end_time,bytes_up,bytes_down\nr1,89860012345678901231,2026-01-10T08:00:00Z,2026-01-10T08:10:00Z,1,2\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := NewCSVReader(bytes.NewReader(in), 4096)
		if err != nil {
			var be *BatchError
			if !errors.As(err, &be) {
				t.Fatalf("header error of no documented kind: %v", err)
			}
			return
		}
		fuzzReader(t, r)
	})
}

func FuzzNDJSONReader(f *testing.F) {
	f.Add([]byte(`{"record_id":"r1","iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:10:00Z","bytes_up":1,"bytes_down":2}` + "\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		fuzzReader(t, NewNDJSONReader(bytes.NewReader(in), 4096))
	})
}

func FuzzDecodeChunk(f *testing.F) {
	f.Add(AppendChunk(nil, ChunkHeader{Carrier: "c", BatchID: "b", ReceivedAt: 5}, []Record{{RecordID: "r", ICCID: "8986", Start: 1, End: 2, BytesUp: 3}}))
	f.Fuzz(func(t *testing.T, in []byte) {
		var h ChunkHeader
		recs, err := DecodeChunk(in, &h, nil)
		var hv ChunkHeader
		view, verr := DecodeChunkView(in, &hv, nil)
		if (err == nil) != (verr == nil) || h != hv || !slices.Equal(recs, view) {
			t.Fatalf("copy (%v) and view (%v) differ", err, verr)
		}
		if err != nil {
			return
		}
		// what decodes re-encodes to the same bytes
		if out := AppendChunk(nil, h, recs); !bytes.Equal(out, in) {
			t.Fatalf("decode/encode is not the identity:\n in %x\nout %x", in, out)
		}
	})
}

func FuzzJSONArrayReader(f *testing.F) {
	f.Add([]byte(`[{"record_id":"r1","iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:10:00Z","bytes_up":1,"bytes_down":2},
 {"record_id":"r2","bytes_up":-1}]`))
	f.Add([]byte(`[1, "a,]", {"x":"}"}, [], null]`))
	f.Add([]byte(`  [ ]  `))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := NewJSONArrayReader(bytes.NewReader(in), 4096)
		if err != nil {
			return
		}
		fuzzReader(t, r)
		// the stream reader agrees with encoding/json: a valid array of
		// short elements reads as one answer (a record or a record
		// error) per element, and nothing else reads to the end
		var elems []json.RawMessage
		valid := json.Unmarshal(in, &elems) == nil
		for _, e := range elems {
			valid = valid && len(e) <= 4096
		}
		r, _ = NewJSONArrayReader(bytes.NewReader(in), 4096)
		n := 0
		for ; n <= 10000; n++ {
			var rec Record
			err := r.Next(&rec)
			var re *RecordError
			if err == nil || errors.As(err, &re) {
				continue
			}
			if err == io.EOF {
				if !valid || n != len(elems) {
					t.Fatalf("read to the end with %d answers; encoding/json: valid %v, %d elements: %q", n, valid, len(elems), in)
				}
				return
			}
			if valid {
				t.Fatalf("a valid array refused at element %d: %v: %q", n, err, in)
			}
			return
		}
	})
}

// FuzzFastJSONAgrees holds the fast NDJSON path to the encoding/json one:
// whatever line the fast path accepts, the slow path accepts too, with the
// same record.
func FuzzFastJSONAgrees(f *testing.F) {
	f.Add([]byte(`{"record_id":"r1","iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:10:00Z","bytes_up":1,"bytes_down":2,"sequence":3,"apn":"cmiot"}`))
	f.Add([]byte(`{"record_id":"r1","bytes_up":01,"bytes_down":2}`))
	f.Add([]byte(`{ "bytes_down" : 0 , "bytes_up":18446744073709551615, "record_id":"" } `))
	f.Fuzz(func(t *testing.T, in []byte) {
		var fast Record
		if !decodeFast(in, &fast) {
			return
		}
		var slow Record
		if err := decodeJSONRecordSlow(in, &slow, 0, 1); err != nil {
			t.Fatalf("fast accepted what encoding/json refuses (%v): %q", err, in)
		}
		if fast != slow {
			t.Fatalf("fast %+v, slow %+v: %q", fast, slow, in)
		}
	})
}
