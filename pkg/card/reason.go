package card

import "strings"

// Reason is one cause of a stop (停机). A card is in service only while it
// has none.
type Reason uint8

const (
	ReasonManual         Reason = 1 << iota // 人工停用: cleared only by a manual resume
	ReasonOverQuota                         // 自动超停: cleared at the next cycle start
	ReasonArrears                           // 欠费停机: cleared by payment
	ReasonExpiry                            // 过期停机: cleared by renewal
	ReasonPool                              // the data pool is exhausted
	ReasonDeviceMismatch                    // 机卡分离: used in another device; an operator clears it (device.go)
	ReasonAnomaly                           // a day's usage far above the card's usual; an operator clears it (anomaly.go)
)

var reasonNames = [...]struct {
	r    Reason
	name string
}{
	{ReasonManual, "manual"}, {ReasonOverQuota, "over_quota"}, {ReasonArrears, "arrears"},
	{ReasonExpiry, "expiry"}, {ReasonPool, "pool"}, {ReasonDeviceMismatch, "device_mismatch"},
	{ReasonAnomaly, "anomaly"},
}

func (r Reason) String() string {
	for _, n := range reasonNames {
		if n.r == r {
			return n.name
		}
	}
	return ""
}

// ParseReason returns the reason of a name, or false.
func ParseReason(s string) (Reason, bool) {
	for _, n := range reasonNames {
		if n.name == s {
			return n.r, true
		}
	}
	return 0, false
}

// Reasons is a set of stop reasons.
type Reasons uint8

// Has reports whether r is in the set.
func (s Reasons) Has(r Reason) bool { return s&Reasons(r) != 0 }

// With returns the set with r added.
func (s Reasons) With(r Reason) Reasons { return s | Reasons(r) }

// Without returns the set with r removed.
func (s Reasons) Without(r Reason) Reasons { return s &^ Reasons(r) }

// Names lists the reasons in a fixed order.
func (s Reasons) Names() []string {
	out := make([]string, 0, 2)
	for _, n := range reasonNames {
		if s.Has(n.r) {
			out = append(out, n.name)
		}
	}
	return out
}

func (s Reasons) String() string { return strings.Join(s.Names(), ",") }
