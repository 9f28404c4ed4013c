package cdr

// decodeFast parses one NDJSON usage record without reflection, for the
// common shape: an object of known keys, each once, with plain ASCII
// strings (no escapes) and non-negative integers. It returns false for
// anything else (an unknown or repeated key, an escape, a float, a null, a
// field that does not parse, a missing byte count) and leaves the record to
// decodeJSONRecord's encoding/json path, which then names the fault. So the
// two always agree on what they accept (a differential fuzz test holds them
// to it), and the fast path only makes the good lines cheap.
func decodeFast(b []byte, rec *Record) bool {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i++
	var seen uint32
	first := true
	for {
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		if b[i] == '}' && first {
			i++
			break
		}
		key, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		f, known := fieldIndex[string(key)] // no copy: the conversion is only for the lookup
		if !known || seen&(1<<f) != 0 {
			return false
		}
		seen |= 1 << f
		i = skipWS(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return false
		}
		switch f {
		case fBytesUp, fBytesDown, fSequence:
			j := i
			for j < len(b) && b[j] >= '0' && b[j] <= '9' {
				j++
			}
			if j == i || (b[i] == '0' && j-i > 1) {
				return false
			}
			var n uint64
			for k := i; k < j; k++ {
				d := uint64(b[k] - '0')
				if n > (^uint64(0)-d)/10 {
					return false // overflows: encoding/json's path says so
				}
				n = n*10 + d
			}
			switch f {
			case fBytesUp:
				rec.BytesUp = n
			case fBytesDown:
				rec.BytesDown = n
			default:
				if n > 1<<32-1 {
					return false
				}
				rec.Sequence = uint32(n)
			}
			i = j
		case fStart, fEnd:
			v, j, ok := plainString(b, i)
			if !ok {
				return false
			}
			if u, ok := parseRFC3339Fast(v); ok { // no string made for a time
				setTime(rec, f, u)
			} else if setField(rec, f, string(v)) != "" {
				return false
			}
			i = j
		default:
			v, j, ok := plainString(b, i)
			if !ok || setField(rec, f, string(v)) != "" {
				return false
			}
			i = j
		}
		first = false
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		if b[i] == ',' {
			i++
			continue
		}
		if b[i] != '}' {
			return false
		}
		i++
		break
	}
	if skipWS(b, i) != len(b) {
		return false
	}
	const required = 1<<fRecordID | 1<<fBytesUp | 1<<fBytesDown
	return seen&required == required
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string at b[i] of printable ASCII without
// escapes, returning it and the index after its closing quote.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, i, false
		}
	}
	return nil, i, false
}
