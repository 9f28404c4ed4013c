package cdr

import "time"

// parseTime reads an RFC 3339 time with an offset, as time.Parse with
// time.RFC3339 does, to Unix seconds. The common forms
// (2026-03-10T08:00:00Z, 2026-03-10T08:00:00+08:00) take a path that
// neither allocates nor goes through time's general parser; every other
// string goes to time.Parse. FuzzParseTimeAgrees holds the two together.
func parseTime[T string | []byte](s T) (int64, bool) {
	if u, ok := parseRFC3339Fast(s); ok {
		return u, true
	}
	t, err := time.Parse(time.RFC3339, string(s))
	if err != nil {
		return 0, false
	}
	return t.Unix(), true
}

// parseRFC3339Fast reads exactly YYYY-MM-DDTHH:MM:SS followed by Z or
// ±HH:MM; it reports false for anything else, valid or not.
func parseRFC3339Fast[T string | []byte](s T) (int64, bool) {
	if (len(s) != 20 && len(s) != 25) || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return 0, false
	}
	num := func(i, n int) (int, bool) {
		v := 0
		for j := i; j < i+n; j++ {
			d := s[j] - '0'
			if d > 9 {
				return 0, false
			}
			v = v*10 + int(d)
		}
		return v, true
	}
	y, ok1 := num(0, 4)
	mo, ok2 := num(5, 2)
	d, ok3 := num(8, 2)
	h, ok4 := num(11, 2)
	mi, ok5 := num(14, 2)
	sec, ok6 := num(17, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || y < 1 || mo < 1 || mo > 12 || d < 1 || d > daysIn(mo, y) || h > 23 || mi > 59 || sec > 59 {
		return 0, false
	}
	offset := 0
	if len(s) == 20 {
		if s[19] != 'Z' {
			return 0, false
		}
	} else {
		oh, okh := num(20, 2)
		om, okm := num(23, 2)
		if (s[19] != '+' && s[19] != '-') || s[22] != ':' || !okh || !okm || oh > 23 || om > 59 {
			return 0, false
		}
		offset = oh*3600 + om*60
		if s[19] == '-' {
			offset = -offset
		}
	}
	return daysFromCivil(y, mo, d)*86400 + int64(h*3600+mi*60+sec-offset), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil is the number of days from 1970-01-01 to a date of the
// proleptic Gregorian calendar (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400 // y >= 0 here
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era*146097 + doe - 719468)
}
