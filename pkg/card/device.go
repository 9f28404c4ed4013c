package card

import (
	"strconv"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// Device binding (机卡绑定): an IoT card is sold for one device, and a card
// taken out and used in another (a phone: 机卡分离) is the classic fraud.
// A card binds to an IMEI: the one given at provisioning, or, when the
// card or its plan says bind_imei "first_seen", the first one its counted
// usage shows. A counted record with another device emits
// EmitIMEIChanged once per new device, and, when the card or its plan
// opts in (stop_on_imei_change), stops the card for ReasonDeviceMismatch,
// which only an operator clears: a rebind to the new IMEI, or a resume.
//
// Devices compare by the first 14 digits of the IMEI (the TAC and serial
// number): an IMEISV of the same device, or the IMEI with its check
// digit, is the same device. A card keeps two numbers, its bound device
// and the last one seen, not every device ever: a card switching between
// two foreign devices is told each switch. A record without an IMEI, or
// with one that is not 14 to 16 digits, proves nothing.

// BindFirstSeen is the bind_imei option that binds a card to the first
// device its usage shows.
const BindFirstSeen = "first_seen"

// device is an IMEI's first 14 digits plus one: 0 is no device.
type device uint64

// deviceOf reads an IMEI (14 to 16 digits), or 0 when it is none: an
// IMEI whose type allocation code (its first 8 digits) is all zeros is
// the filler carriers write for "unknown".
func deviceOf(imei string) device {
	if len(imei) < 14 || len(imei) > 16 || imei[:8] == "00000000" {
		return 0
	}
	var n uint64
	for i := 0; i < len(imei); i++ {
		ch := imei[i]
		if ch < '0' || ch > '9' {
			return 0
		}
		if i < 14 {
			n = n*10 + uint64(ch-'0')
		}
	}
	return device(n + 1)
}

// String is the device's 14 digits ("" for none).
func (d device) String() string {
	if d == 0 {
		return ""
	}
	s := strconv.FormatUint(uint64(d-1), 10)
	for len(s) < 14 {
		s = "0" + s
	}
	return s
}

// ValidateIMEI checks an IMEI given at provisioning: 15 digits whose last
// is the Luhn check digit of the first 14. It returns "" when valid.
func ValidateIMEI(s string) string {
	if len(s) != 15 {
		return "must be 15 digits (14 and a check digit)"
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "must be digits only"
		}
	}
	if luhnDigit(s[:14]) != s[14] {
		return "check digit is wrong (Luhn)"
	}
	return ""
}

// luhnDigit is the Luhn check digit of the digits s.
func luhnDigit(s string) byte {
	sum := 0
	for i := len(s) - 1; i >= 0; i-- {
		d := int(s[i] - '0')
		if (len(s)-1-i)%2 == 0 {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return byte('0' + (10-sum%10)%10)
}

// binding is how a card binds: to the first device seen, and whether a
// new device stops it (each is on when the card or its plan says so).
func (c *Card) binding(pl *plan) (firstSeen, stop bool) {
	return c.bindFirst || pl.BindIMEI == BindFirstSeen, c.stopOnIMEI || pl.StopOnIMEIChange
}

// checkDevice applies device binding to a counted record of the card.
// A record of a session that started before the binding (a late record
// from the device before a rebind) proves nothing against it; a late
// record of a closed cycle is told but stops nothing now, as no late
// record does.
func (p *Partition) checkDevice(c *Card, pl *plan, imei string, at int64, h *cdr.ChunkHeader, r *cdr.Record, late bool, out []Emitted) []Emitted {
	d := deviceOf(imei)
	if d == 0 || r.Start < c.imeiSince {
		return out
	}
	firstSeen, stop := c.binding(pl)
	switch {
	case c.imeiBound == 0:
		if firstSeen {
			c.imeiBound, c.imeiSince, c.dirty = d, r.Start, true
		}
		if c.imeiLast != d {
			c.imeiLast, c.dirty = d, true
		}
		return out
	case d == c.imeiBound, d == c.imeiLast:
		// its own device, or the stranger already told
		if c.imeiLast != d {
			c.imeiLast, c.dirty = d, true
		}
		return out
	}
	cause := cause(h, r)
	e := c.emit(EmitIMEIChanged, at, cause, pl)
	e.IMEI, e.BoundIMEI, e.PreviousIMEI = d.String(), c.imeiBound.String(), c.imeiLast.String()
	out = append(out, e)
	c.imeiLast, c.dirty = d, true
	if stop && !late {
		out = c.raise(ReasonDeviceMismatch, at, cause, pl, out)
	}
	return out
}

// applyRebind binds the card to a new device at an operator's word and
// lifts a device-mismatch stop. It is refused only for an unknown or a
// cancelled card: the binding is the operator's to set whatever else
// stops the card.
func (p *Partition) applyRebind(in *Input, out []Emitted) []Emitted {
	rb := in.Rebind
	c := p.cards[rb.ICCID]
	now := p.at(in)
	cause := "event:" + in.ID
	refuse := func(code string) []Emitted {
		e := Emitted{Type: EmitCommandRefused, ICCID: rb.ICCID, At: now, Cause: cause, Code: code,
			Operator: rb.Operator, Note: rb.Note, Detail: string(in.Type)}
		if c != nil {
			c.setLastCommand(CommandOutcome{ID: in.ID, Code: code})
			e.AccountID, e.Reasons = c.account, c.reasons
		}
		return append(out, e)
	}
	d := deviceOf(rb.IMEI)
	switch {
	case c == nil:
		return refuse(RefusedUnknownCard)
	case c.cancelled:
		return refuse(RefusedCancelled)
	case d == 0:
		return append(out, refused(in, rb.ICCID, RefusedInvalid, "imei: not 14 to 16 digits"))
	}
	pl := p.plans[c.planID]
	e := c.emit(EmitRebound, now, cause, pl)
	e.IMEI, e.BoundIMEI, e.Operator, e.Note = d.String(), c.imeiBound.String(), rb.Operator, rb.Note
	c.imeiBound, c.imeiLast, c.imeiSince = d, d, now
	c.setLastCommand(CommandOutcome{ID: in.ID, Applied: true})
	out = append(out, e)
	n := len(out)
	out = c.clear(ReasonDeviceMismatch, now, cause, pl, out)
	for i := n; i < len(out); i++ {
		out[i].Operator, out[i].Note = rb.Operator, rb.Note
	}
	return out
}
