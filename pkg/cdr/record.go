// Package cdr holds usage records (call detail records, 话单) as carriers send
// them: the record type, its validation, the CSV and NDJSON parsers for
// outside input, and the compact chunk encoding records travel in on the log.
package cdr

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// Record is one data CDR: a session (or an interim part of one) of a card.
// Times are Unix seconds; bytes are integers, never floats.
type Record struct {
	RecordID  string
	ICCID     string
	IMSI      string
	MSISDN    string
	Start     int64
	End       int64
	BytesUp   uint64
	BytesDown uint64
	Sequence  uint32
	SessionID string
	APN       string
	RAT       string
	IMEI      string
	CellID    string
}

// Bytes is the record's total usage, up plus down.
func (r *Record) Bytes() uint64 { return r.BytesUp + r.BytesDown }

// ContentHash is a 64-bit FNV-1a hash of every field but the record id. Two
// records with one id and different hashes are a conflict.
func (r *Record) ContentHash() uint64 {
	h := newHash()
	h = h.str(r.ICCID).str(r.IMSI).str(r.MSISDN)
	h = h.u64(uint64(r.Start)).u64(uint64(r.End)).u64(r.BytesUp).u64(r.BytesDown).u64(uint64(r.Sequence))
	h = h.str(r.SessionID).str(r.APN).str(r.RAT).str(r.IMEI).str(r.CellID)
	return uint64(h)
}

// IDHash is a 64-bit FNV-1a hash of a carrier and a record id: the key that
// makes a record count once.
func IDHash(carrier, recordID string) uint64 {
	return uint64(newHash().str(carrier).str(recordID))
}

type fnv uint64

func newHash() fnv { return 14695981039346656037 }

func (h fnv) str(s string) fnv {
	for i := 0; i < len(s); i++ {
		h ^= fnv(s[i])
		h *= 1099511628211
	}
	// a separator, so that ("ab","c") and ("a","bc") differ
	h ^= 0xff
	h *= 1099511628211
	return h
}

func (h fnv) u64(v uint64) fnv {
	for i := 0; i < 8; i++ {
		h ^= fnv(byte(v >> (8 * i)))
		h *= 1099511628211
	}
	return h
}

// Limits bound what validation accepts.
type Limits struct {
	// MaxFutureSkew is how far past the receive time a record may end.
	MaxFutureSkew time.Duration
	// MaxBytes bounds bytes up and bytes down of one record.
	MaxBytes uint64
	// MaxFieldLen bounds each text field.
	MaxFieldLen int
}

// DefaultLimits are the limits used when none are configured.
var DefaultLimits = Limits{
	MaxFutureSkew: 15 * time.Minute,
	MaxBytes:      1 << 40, // 1 TiB in one session is not a real record
	MaxFieldLen:   128,
}

// FieldError says which field of a record is wrong and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Validate checks a record against the rules that need no card directory.
// receivedAt is the Unix time the record arrived, for the future-skew check.
func (r *Record) Validate(receivedAt int64, lim Limits) *FieldError {
	if r.RecordID == "" {
		return &FieldError{"record_id", "required"}
	}
	for _, f := range [...]struct{ name, v string }{
		{"record_id", r.RecordID}, {"iccid", r.ICCID}, {"imsi", r.IMSI}, {"msisdn", r.MSISDN},
		{"session_id", r.SessionID}, {"apn", r.APN}, {"rat", r.RAT}, {"imei", r.IMEI}, {"cell_id", r.CellID},
	} {
		if len(f.v) > lim.MaxFieldLen {
			return &FieldError{f.name, "longer than " + strconv.Itoa(lim.MaxFieldLen) + " characters"}
		}
		if !utf8.ValidString(f.v) {
			return &FieldError{f.name, "not valid UTF-8"}
		}
	}
	switch {
	case r.ICCID != "":
		if err := ValidateICCID(r.ICCID); err != "" {
			return &FieldError{"iccid", err}
		}
	case r.IMSI == "" && r.MSISDN == "":
		return &FieldError{"iccid", "required (or imsi or msisdn)"}
	}
	if r.Start <= 0 {
		return &FieldError{"start_time", "required"}
	}
	if r.End <= 0 {
		return &FieldError{"end_time", "required"}
	}
	if r.End < r.Start {
		return &FieldError{"end_time", "before start_time"}
	}
	if r.End > receivedAt+int64(lim.MaxFutureSkew/time.Second) {
		return &FieldError{"end_time", "in the future (more than " + lim.MaxFutureSkew.String() + " past the receive time)"}
	}
	if r.BytesUp > lim.MaxBytes {
		return &FieldError{"bytes_up", "above the bound of " + strconv.FormatUint(lim.MaxBytes, 10)}
	}
	if r.BytesDown > lim.MaxBytes {
		return &FieldError{"bytes_down", "above the bound of " + strconv.FormatUint(lim.MaxBytes, 10)}
	}
	return nil
}

// ValidateICCID checks an ICCID: 19 or 20 digits, starting with 89, with a
// valid Luhn check digit last. It returns "" when valid, else the reason.
func ValidateICCID(s string) string {
	if len(s) < 19 || len(s) > 20 {
		return "must be 19 or 20 digits"
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "must be digits only"
		}
	}
	if s[0] != '8' || s[1] != '9' {
		return "must start with 89"
	}
	if !luhnValid(s) {
		return "check digit is wrong (Luhn)"
	}
	return ""
}

// ValidateIMSI checks an IMSI (ITU-T E.212): 6 to 15 digits, the country
// and network codes then the subscriber number. "" when valid.
func ValidateIMSI(s string) string { return digits(s, 6, 15, "6 to 15 digits (ITU-T E.212)") }

// ValidateMSISDN checks an MSISDN in international form (ITU-T E.164):
// 6 to 15 digits, the country code first, without "+" or spaces, as the
// carriers write it in their CDRs. "" when valid.
func ValidateMSISDN(s string) string {
	return digits(s, 6, 15, "6 to 15 digits in international form, country code first, without + (ITU-T E.164)")
}

func digits(s string, lo, hi int, want string) string {
	if len(s) < lo || len(s) > hi {
		return "must be " + want
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "must be " + want
		}
	}
	return ""
}

func luhnValid(s string) bool { return LuhnDigit(s[:len(s)-1]) == s[len(s)-1] }

// LuhnDigit returns the check digit that makes prefix+digit Luhn-valid. Test
// helpers and fleet generators use it to make valid ICCIDs.
func LuhnDigit(prefix string) byte {
	sum := 0
	double := true
	for i := len(prefix) - 1; i >= 0; i-- {
		d := int(prefix[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return byte('0' + (10-sum%10)%10)
}

// PackICCID packs an ICCID of 19 or 20 digits that starts with 89 into a
// number: the digits after 89 (at most 18, below 2^60) and the length in
// the top bit. Distinct such ICCIDs pack to distinct numbers.
func PackICCID(s string) (uint64, bool) {
	if (len(s) != 19 && len(s) != 20) || s[0] != '8' || s[1] != '9' {
		return 0, false
	}
	var n uint64
	for i := 2; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 {
			return 0, false
		}
		n = n*10 + uint64(d)
	}
	if len(s) == 20 {
		n |= 1 << 63
	}
	return n, true
}
