package card

import (
	"sync"
	"time"
	// The fold depends on no machine's zone files: the zone data is built in.
	_ "time/tzdata"
)

// DefaultTimeZone is the time zone of a plan that names none (DOMAIN.md:
// "Asia/Shanghai unless the plan says otherwise").
const DefaultTimeZone = "Asia/Shanghai"

// Cycle is a billing cycle: [Start, End) in Unix seconds.
type Cycle struct {
	Start int64
	End   int64
}

// Contains reports whether t falls in the cycle.
func (c Cycle) Contains(t int64) bool { return t >= c.Start && t < c.End }

// CycleAt returns the billing cycle holding the instant t: a calendar month
// in loc that starts at 00:00 on the anchor day, clamped to the last day of
// a shorter month (an anchor of 31 starts on 28 or 29 February).
func CycleAt(t int64, loc *time.Location, anchor int) Cycle {
	lt := time.Unix(t, 0).In(loc)
	y, m := lt.Year(), lt.Month()
	start := anchorDate(y, m, anchor, loc)
	if start.Unix() > t {
		y, m = prevMonth(y, m)
		start = anchorDate(y, m, anchor, loc)
	}
	ny, nm := nextMonth(y, m)
	return Cycle{Start: start.Unix(), End: anchorDate(ny, nm, anchor, loc).Unix()}
}

func anchorDate(y int, m time.Month, anchor int, loc *time.Location) time.Time {
	if last := daysIn(y, m); anchor > last {
		anchor = last
	}
	return time.Date(y, m, anchor, 0, 0, 0, 0, loc)
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func prevMonth(y int, m time.Month) (int, time.Month) {
	if m == time.January {
		return y - 1, time.December
	}
	return y, m - 1
}

func nextMonth(y int, m time.Month) (int, time.Month) {
	if m == time.December {
		return y + 1, time.January
	}
	return y, m + 1
}

var zones sync.Map // name -> *time.Location

// Zone resolves a time zone name. The result depends only on the name and
// the zone data built into the binary, so a replay resolves it the same way.
func Zone(name string) (*time.Location, error) {
	if name == "" {
		name = DefaultTimeZone
	}
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	zones.Store(name, l)
	return l, nil
}
