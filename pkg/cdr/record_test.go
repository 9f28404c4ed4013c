package cdr

import (
	"testing"
	"time"
)

func TestValidateICCID(t *testing.T) {
	good := "8986001234567890123"
	good += string(LuhnDigit(good))
	cases := []struct {
		iccid, want string
	}{
		{good, ""},
		{good[:19], "check digit is wrong (Luhn)"},
		{"89860012345678", "must be 19 or 20 digits"},
		{"898600123456789012345", "must be 19 or 20 digits"},
		{"8986001234567890X23" + "4", "must be digits only"},
		{"1986001234567890123" + string(LuhnDigit("1986001234567890123")), "must start with 89"},
		{good[:19] + string('0'+(good[19]-'0'+1)%10), "check digit is wrong (Luhn)"},
	}
	for _, c := range cases {
		if got := ValidateICCID(c.iccid); got != c.want {
			t.Errorf("ValidateICCID(%q) = %q, want %q", c.iccid, got, c.want)
		}
	}
}

// One row per validation rule: the field named and the reason.
func TestRecordValidate(t *testing.T) {
	now := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC).Unix()
	iccid := "8986001234567890123"
	iccid += string(LuhnDigit(iccid))
	ok := Record{RecordID: "r1", ICCID: iccid, Start: now - 600, End: now - 60, BytesUp: 1, BytesDown: 2}
	cases := []struct {
		name  string
		mut   func(*Record)
		field string
	}{
		{"valid", func(*Record) {}, ""},
		{"no record id", func(r *Record) { r.RecordID = "" }, "record_id"},
		{"no card identity", func(r *Record) { r.ICCID = "" }, "iccid"},
		{"imsi instead of iccid", func(r *Record) { r.ICCID, r.IMSI = "", "460001234567890" }, ""},
		{"bad iccid", func(r *Record) { r.ICCID = "123" }, "iccid"},
		{"no start", func(r *Record) { r.Start = 0 }, "start_time"},
		{"no end", func(r *Record) { r.End = 0 }, "end_time"},
		{"end before start", func(r *Record) { r.End = r.Start - 1 }, "end_time"},
		{"end in the future", func(r *Record) { r.End = now + 3600 }, "end_time"},
		{"end within the skew", func(r *Record) { r.End = now + 60 }, ""},
		{"absurd bytes up", func(r *Record) { r.BytesUp = 1 << 50 }, "bytes_up"},
		{"absurd bytes down", func(r *Record) { r.BytesDown = 1 << 50 }, "bytes_down"},
		{"long field", func(r *Record) { r.APN = string(make([]byte, 200)) }, "apn"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ok
			c.mut(&r)
			err := r.Validate(now, DefaultLimits)
			switch {
			case c.field == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case c.field != "" && err == nil:
				t.Fatalf("accepted, want an error on %s", c.field)
			case c.field != "" && (err.Field != c.field || err.Reason == ""):
				t.Fatalf("error %v, want field %s", err, c.field)
			}
		})
	}
}

func TestIDHashSeparatesFields(t *testing.T) {
	if IDHash("ab", "c") == IDHash("a", "bc") {
		t.Fatal("carrier and record id run together")
	}
	a := Record{RecordID: "x", BytesUp: 1}
	b := Record{RecordID: "y", BytesUp: 1}
	if a.ContentHash() != b.ContentHash() {
		t.Fatal("the content hash depends on the record id")
	}
	b.BytesUp = 2
	if a.ContentHash() == b.ContentHash() {
		t.Fatal("different bytes, same content hash")
	}
}

func TestValidateIMSIAndMSISDN(t *testing.T) {
	for _, c := range []struct {
		v      string
		imsi   bool // the IMSI check accepts it
		msisdn bool // the MSISDN check accepts it
	}{
		{"460001234567890", true, true},
		{"8613800138000", true, true},
		{"46000", false, false},
		{"4600012345678901", false, false},
		{"+8613800138000", false, false},
		{"86 138 0013 8000", false, false},
		{"46000123456789a", false, false},
	} {
		if got := ValidateIMSI(c.v) == ""; got != c.imsi {
			t.Errorf("ValidateIMSI(%q) accepts = %v, want %v (%q)", c.v, got, c.imsi, ValidateIMSI(c.v))
		}
		if got := ValidateMSISDN(c.v) == ""; got != c.msisdn {
			t.Errorf("ValidateMSISDN(%q) accepts = %v, want %v (%q)", c.v, got, c.msisdn, ValidateMSISDN(c.v))
		}
	}
}
