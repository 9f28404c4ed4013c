package cdr

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

func readAll(t testing.TB, r Reader) (recs []Record, errs []*RecordError, batchErr error) {
	for {
		var rec Record
		err := r.Next(&rec)
		if err == io.EOF {
			return
		}
		var re *RecordError
		if errors.As(err, &re) {
			errs = append(errs, re)
			continue
		}
		if err != nil {
			return recs, errs, err
		}
		recs = append(recs, rec)
	}
}

func TestCSVReader(t *testing.T) {
	in := "ICCID, record_id ,start_time,end_time,bytes_up,bytes_down,apn\n" +
		"89860012345678901231,r1,2026-01-10T08:00:00+08:00,2026-01-10T08:10:00+08:00,100,200,cmiot\n" +
		"89860012345678901231,r2,2026-01-10T08:00:00Z,yesterday,1,2,\n" +
		"89860012345678901231,r3,2026-01-10T08:00:00Z,2026-01-10T08:00:00Z,1.5,2,\n" +
		"89860012345678901231,r4,2026-01-10T08:00:00Z\n" +
		"89860012345678901231,r5,2026-01-10T08:00:00Z,2026-01-10T08:00:00Z,,2,\n"
	r, err := NewCSVReader(strings.NewReader(in), 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, errs, berr := readAll(t, r)
	if berr != nil {
		t.Fatal(berr)
	}
	if len(recs) != 1 || recs[0].RecordID != "r1" || recs[0].BytesUp != 100 || recs[0].BytesDown != 200 || recs[0].APN != "cmiot" ||
		recs[0].Start != 1768003200 || recs[0].End != 1768003800 {
		t.Fatalf("records: %+v", recs)
	}
	want := []struct {
		line  int
		id    string
		field string
	}{{3, "r2", "end_time"}, {4, "r3", "bytes_up"}, {5, "", ""}, {6, "r5", "bytes_up"}}
	if len(errs) != len(want) {
		t.Fatalf("errors: %v", errs)
	}
	for i, w := range want {
		if errs[i].Line != w.line || errs[i].Field != w.field || errs[i].Index != i+1 {
			t.Errorf("error %d = %+v, want line %d field %q", i, errs[i], w.line, w.field)
		}
	}
}

func TestCSVHeaderErrors(t *testing.T) {
	for in, want := range map[string]string{
		"": "empty body",
		"record_id,iccid,start_time,end_time,bytes_up,bytes_down,colour\n": `unknown column(s) "colour"`,
		"record_id,iccid,start_time,end_time,bytes_up\n":                   "missing column(s) bytes_down",
		"record_id,start_time,end_time,bytes_up,bytes_down\n":              "iccid (or imsi or msisdn)",
		"record_id,iccid,iccid,start_time,end_time,bytes_up,bytes_down\n":  `"iccid" appears twice`,
	} {
		_, err := NewCSVReader(strings.NewReader(in), 0)
		var be *BatchError
		if !errors.As(err, &be) || !strings.Contains(err.Error(), want) {
			t.Errorf("header %q: %v, want %q", in, err, want)
		}
	}
}

func TestNDJSONReader(t *testing.T) {
	in := `{"record_id":"r1","iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00+08:00","end_time":"2026-01-10T08:10:00+08:00","bytes_up":100,"bytes_down":200,"sequence":3,"session_id":"s"}

{"record_id":"r2","iccid":"x","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:00:00Z","bytes_up":-1,"bytes_down":2}
{"record_id":"r3","colour":"red"}
{"record_id":"r4","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:00:00Z","bytes_up":1}
{"record_id":"r5","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:00:00Z","bytes_up":1.5,"bytes_down":1}
{"record_id": 7}
not json
`
	recs, errs, berr := readAll(t, NewNDJSONReader(strings.NewReader(in), 0))
	if berr != nil {
		t.Fatal(berr)
	}
	if len(recs) != 1 || recs[0].Sequence != 3 || recs[0].SessionID != "s" || recs[0].BytesDown != 200 {
		t.Fatalf("records: %+v", recs)
	}
	want := []struct {
		line  int
		id    string
		field string
	}{{3, "r2", "bytes_up"}, {4, "", "colour"}, {5, "r4", "bytes_down"}, {6, "r5", "bytes_up"}, {7, "", "record_id"}, {8, "", ""}}
	if len(errs) != len(want) {
		t.Fatalf("errors: %v", errs)
	}
	for i, w := range want {
		if errs[i].Line != w.line || errs[i].Field != w.field || errs[i].RecordID != w.id {
			t.Errorf("error %d = %+v, want line %d id %q field %q", i, errs[i], w.line, w.id, w.field)
		}
	}
}

func TestNDJSONLineLimit(t *testing.T) {
	in := `{"record_id":"` + strings.Repeat("x", 200) + `"}` + "\n"
	_, _, err := readAll(t, NewNDJSONReader(strings.NewReader(in), 100))
	var be *BatchError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "line 1 is longer than the limit") {
		t.Fatalf("got %v", err)
	}
}

func TestChunkRoundTrip(t *testing.T) {
	recs := []Record{
		{RecordID: "r1", ICCID: "89860012345678901231", Start: 1768003200, End: 1768003800, BytesUp: 1, BytesDown: 1 << 40, Sequence: 7,
			SessionID: "s", APN: "cmiot", RAT: "NB-IoT", IMEI: "35", CellID: "c"},
		{RecordID: "r2", IMSI: "460", MSISDN: "861", Start: 1, End: 1},
	}
	h := ChunkHeader{Carrier: "cmcc", BatchID: "b", ReceivedAt: 1768003900}
	b := AppendChunk(nil, h, recs)
	var h2 ChunkHeader
	got, err := DecodeChunk(b, &h2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h2 != h || len(got) != 2 || got[0] != recs[0] || got[1] != recs[1] {
		t.Fatalf("round trip: %+v %+v", h2, got)
	}
	for i := range b {
		if _, err := DecodeChunk(b[:i], &h2, nil); err == nil {
			t.Fatalf("a chunk cut at %d bytes decoded", i)
		}
		if _, err := DecodeChunkView(b[:i], &h2, nil); err == nil {
			t.Fatalf("a chunk cut at %d bytes decoded as a view", i)
		}
	}
	// the builder encodes the same bytes, record by record, and again after
	// a reset
	var cb ChunkBuilder
	for round := 0; round < 2; round++ {
		cb.Reset()
		for i := range recs {
			cb.Add(&recs[i])
			cb.Grow(1000 * round) // growing keeps what was added
		}
		if cb.Len() != 2 || !bytes.Equal(cb.Bytes(h), b) {
			t.Fatalf("round %d: the builder's chunk differs:\n%x\n%x", round, cb.Bytes(h), b)
		}
	}
	// a view reads the same, sharing the chunk's bytes
	var h3 ChunkHeader
	view, err := DecodeChunkView(b, &h3, nil)
	if err != nil || h3 != h || view[0] != recs[0] || view[1] != recs[1] {
		t.Fatalf("view: %+v %+v %v", h3, view, err)
	}
	for i := range b {
		b[i] = 0
	}
	if view[0].APN == "cmiot" || got[0].APN != "cmiot" {
		t.Fatalf("after the chunk changed: view %q, copy %q", view[0].APN, got[0].APN)
	}
}

func TestJSONArrayReader(t *testing.T) {
	in := `[
  {"record_id":"r1","iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:10:00Z","bytes_up":1,"bytes_down":2},
  {"record_id":"r2","iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:10:00Z","bytes_up":-1,"bytes_down":2},

  {"record_id":"r3","colour":"red"}
]`
	r, err := NewJSONArrayReader(strings.NewReader(in), 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, errs, berr := readAll(t, r)
	if berr != nil {
		t.Fatal(berr)
	}
	if len(recs) != 1 || recs[0].BytesDown != 2 {
		t.Fatalf("records %+v", recs)
	}
	if len(errs) != 2 || errs[0].Line != 3 || errs[0].Field != "bytes_up" || errs[1].Line != 5 || errs[1].Field != "colour" {
		t.Fatalf("errors %+v", errs)
	}
	for in, want := range map[string]string{"": "empty body", `{"a":1}`: "not a JSON array", `[{"record_id":"x"}`: "not closed", `[] []`: "after the JSON array"} {
		r, err := NewJSONArrayReader(strings.NewReader(in), 0)
		if err == nil {
			_, _, err = readAll(t, r)
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

// Text that is not UTF-8 is refused in every format with its field named:
// rewritten to U+FFFD, two different record ids would become one and a
// record would silently not count. Numbers given as strings are refused
// (the contract says integers).
func TestTextMustBeUTF8AndNumbersIntegers(t *testing.T) {
	valid := `"iccid":"89860012345678901231","start_time":"2026-01-10T08:00:00Z","end_time":"2026-01-10T08:00:00Z"`
	lines := []string{
		`{"record_id":"a` + "\xff" + `",` + valid + `,"bytes_up":1,"bytes_down":2}`,
		`{"record_id":"a` + "\xfe" + `",` + valid + `,"bytes_up":1,"bytes_down":2}`,
		`{"record_id":"b",` + valid + `,"apn":"x` + "\xc3" + `","bytes_up":1,"bytes_down":2}`,
		`{"record_id":"c",` + valid + `,"apn":"物联网","bytes_up":1,"bytes_down":2}`,
		`{"record_id":"d",` + valid + `,"bytes_up":"12","bytes_down":2}`,
		`{"record_id":"e",` + valid + `,"bytes_up":1,"bytes_down":2,"sequence":"3"}`,
	}
	want := []struct{ field, reason string }{{"record_id", "UTF-8"}, {"record_id", "UTF-8"}, {"apn", "UTF-8"}, {"bytes_up", "string"}, {"sequence", "string"}}
	check := func(format string, recs []Record, errs []*RecordError) {
		t.Helper()
		if len(recs) != 1 || recs[0].RecordID != "c" || recs[0].APN != "物联网" {
			t.Fatalf("%s: records %+v", format, recs)
		}
		if len(errs) != len(want) {
			t.Fatalf("%s: errors %v", format, errs)
		}
		for i, w := range want {
			if errs[i].Field != w.field || !strings.Contains(errs[i].Reason, w.reason) {
				t.Errorf("%s: error %d = %+v, want field %s (%s)", format, i, errs[i], w.field, w.reason)
			}
		}
	}
	recs, errs, err := readAll(t, NewNDJSONReader(strings.NewReader(strings.Join(lines, "\n")), 0))
	if err != nil {
		t.Fatal(err)
	}
	check("ndjson", recs, errs)
	ar, err := NewJSONArrayReader(strings.NewReader("["+strings.Join(lines, ",")+"]"), 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, errs, err = readAll(t, ar)
	if err != nil {
		t.Fatal(err)
	}
	check("json array", recs, errs)
	// CSV keeps the bytes; validation refuses them, field named
	for _, tc := range []struct {
		rec   Record
		field string
	}{{Record{RecordID: "a\xff", ICCID: "89860012345678901231"}, "record_id"}, {Record{RecordID: "a", ICCID: "89860012345678901231", APN: "\xc3"}, "apn"}} {
		tc.rec.Start, tc.rec.End = 1768003200, 1768003200
		if fe := tc.rec.Validate(1768003200, DefaultLimits); fe == nil || fe.Field != tc.field || !strings.Contains(fe.Reason, "UTF-8") {
			t.Errorf("validate %q: %v, want %s not UTF-8", tc.rec.RecordID, fe, tc.field)
		}
	}
}

// The CSV header line is held to the line limit, and a header of unknown
// columns gets a short answer.
func TestCSVHeaderLimits(t *testing.T) {
	_, err := NewCSVReader(strings.NewReader("record_id,"+strings.Repeat("x", 5000)+"\nr1\n"), 1024)
	var be *BatchError
	if !errors.As(err, &be) || !be.LineTooLong || !strings.Contains(err.Error(), "header") {
		t.Fatalf("a 5 kB header against a 1 kB limit: %v", err)
	}
	var cols []string
	for i := 0; i < 1000; i++ {
		cols = append(cols, fmt.Sprint("colour", i, strings.Repeat("y", 100)))
	}
	_, err = NewCSVReader(strings.NewReader(strings.Join(cols, ",")+"\n"), 0)
	if !errors.As(err, &be) || len(err.Error()) > 2000 || !strings.Contains(err.Error(), "unknown column") {
		t.Fatalf("1,000 unknown columns: %d bytes of error", len(err.Error()))
	}
	if _, err := NewCSVReader(strings.NewReader("record_id,iccid,start_time,end_time,bytes_up,bytes_down\n"), 1024); err != nil {
		t.Fatalf("a good header under the limit: %v", err)
	}
}

// repeatReader yields n copies of b, never holding them.
type repeatReader struct {
	b byte
	n int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = r.b
	}
	r.n -= k
	return k, nil
}

// One endless line (a gzip bomb's payload) is refused at the line limit
// having cost about the limit in memory, not the line: encoding/csv would
// read the whole line first.
func TestLongLineCostsTheLimitNotTheLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   io.Reader
	}{
		{"header", &repeatReader{'a', 64 << 20}},
		{"record", io.MultiReader(strings.NewReader("record_id,iccid,start_time,end_time,bytes_up,bytes_down\n"), &repeatReader{'a', 64 << 20})},
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r, err := NewCSVReader(tc.in, 64<<10)
		if err == nil {
			var rec Record
			err = r.Next(&rec)
		}
		runtime.ReadMemStats(&after)
		var be *BatchError
		if !errors.As(err, &be) || !be.LineTooLong {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
			t.Errorf("%s: a 64 MiB line cost %d bytes of allocation", tc.name, grew)
		}
	}
}

// endless is a body that never ends: head, then fill forever. It counts
// what was read from it.
type endless struct {
	head []byte
	fill byte
	read int
}

func (e *endless) Read(p []byte) (int, error) {
	n := copy(p, e.head)
	e.head = e.head[n:]
	for i := n; i < len(p); i++ {
		p[i] = e.fill
	}
	e.read += len(p)
	return len(p), nil
}

// Every format reads a body as a stream in bounded memory: a line, header
// or array element that never ends is refused as too long having read
// little more than the limit (before, the JSON array reader read the
// whole body first: a gzip bomb of a few hundred KiB took gigabytes).
func TestEndlessLinesAreRefusedEarly(t *testing.T) {
	const limit = 4096
	open := map[string]func(io.Reader) (Reader, error){
		"csv header": func(in io.Reader) (Reader, error) { return NewCSVReader(in, limit) },
		"csv line": func(in io.Reader) (Reader, error) {
			return NewCSVReader(io.MultiReader(strings.NewReader("record_id,iccid,start_time,end_time,bytes_up,bytes_down\n"), in), limit)
		},
		"ndjson line": func(in io.Reader) (Reader, error) { return NewNDJSONReader(in, limit), nil },
		"json element": func(in io.Reader) (Reader, error) {
			return NewJSONArrayReader(io.MultiReader(strings.NewReader(`[{"record_id":"`), in), limit)
		},
		"json string element": func(in io.Reader) (Reader, error) {
			return NewJSONArrayReader(io.MultiReader(strings.NewReader(`[{"record_id":"r"},"`), in), limit)
		},
	}
	for name, o := range open {
		body := &endless{fill: 'a'}
		r, err := o(body)
		if err == nil {
			var rec Record
			for err == nil {
				err = r.Next(&rec)
				var re *RecordError
				if errors.As(err, &re) {
					err = nil
				}
			}
		}
		var be *BatchError
		if !errors.As(err, &be) || !be.LineTooLong {
			t.Errorf("%s: %v, want a line too long", name, err)
		}
		if body.read > limit+256<<10 {
			t.Errorf("%s: read %d bytes of an endless body to refuse a line over %d", name, body.read, limit)
		}
	}
}
