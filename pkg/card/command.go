package card

// Refusal codes of manual commands (DOMAIN.md §1). The API maps them to
// problem types "cardmeter:refused/<code>".
const (
	RefusedCancelled   = "cancelled"
	RefusedExpired     = "plan-expired"
	RefusedInArrears   = "in-arrears"
	RefusedOverQuota   = "over-quota"
	RefusedUnknownCard = "unknown-card"
	// refusals of billing and provisioning inputs
	RefusedInvalid      = "invalid"       // a field the fold cannot take
	RefusedUnknownPlan  = "unknown-plan"  // a card on a plan not defined
	RefusedUnknownPool  = "unknown-pool"  // a card in a pool not defined for its account
	RefusedOtherAccount = "other-account" // a card or pool already of another account
)

// applyCommand decides an operator's manual stop or resume against the
// card's state, then applies it, or emits a typed refusal. A manual stop
// is allowed only while the plan is valid, the account is not in arrears
// and the card is not over quota (nor its pool); a manual resume likewise.
// A resume clears the manual stop, an arrears stop the account has paid
// off, a device-mismatch and an anomaly stop; it clears no other reason. Who asked and why are in the events.
func (p *Partition) applyCommand(in *Input, out []Emitted) []Emitted {
	cmd := in.Command
	c := p.cards[cmd.ICCID]
	cause := "event:" + in.ID
	now := p.at(in)
	refuse := func(code string) []Emitted {
		if c != nil {
			c.setLastCommand(CommandOutcome{ID: in.ID, Code: code})
		}
		e := Emitted{Type: EmitCommandRefused, ICCID: cmd.ICCID, At: now, Cause: cause, Code: code,
			Operator: cmd.Operator, Note: cmd.Note, Detail: string(in.Type)}
		if c != nil {
			e.AccountID, e.Reasons = c.account, c.reasons
		}
		return append(out, e)
	}
	if c == nil {
		return refuse(RefusedUnknownCard)
	}
	defer p.reschedule(c)
	out = p.checkValidity(c, now, cause, out)
	a := p.accounts[c.account]
	switch {
	case c.cancelled:
		return refuse(RefusedCancelled)
	case c.expiredAt != 0:
		return refuse(RefusedExpired)
	case a.inArrears:
		return refuse(RefusedInArrears)
	case c.reasons.Has(ReasonOverQuota) || c.reasons.Has(ReasonPool):
		return refuse(RefusedOverQuota)
	}
	pl := p.plans[c.planID]
	c.setLastCommand(CommandOutcome{ID: in.ID, Applied: true})
	n := len(out)
	if in.Type == TypeStopRequested {
		out = c.raise(ReasonManual, now, cause, pl, out)
	} else {
		out = c.clear(ReasonManual, now, cause, pl, out)
		out = c.clear(ReasonArrears, now, cause, pl, out)
		out = c.clear(ReasonDeviceMismatch, now, cause, pl, out)
		out = c.clear(ReasonAnomaly, now, cause, pl, out)
	}
	for i := n; i < len(out); i++ {
		out[i].Operator, out[i].Note = cmd.Operator, cmd.Note
	}
	return out
}

// commandCodes are the codes a command's outcome may carry, by their
// number in a card (0: none).
var commandCodes = [...]string{"", RefusedCancelled, RefusedExpired, RefusedInArrears, RefusedOverQuota, RefusedUnknownCard,
	RefusedInvalid, RefusedUnknownPlan, RefusedUnknownPool, RefusedOtherAccount}

func commandCode(code string) (uint8, bool) {
	for i, c := range commandCodes {
		if c == code {
			return uint8(i), true
		}
	}
	return 0, false
}

// setLastCommand keeps the outcome of the card's latest manual command,
// in 16 bytes and two: a card keeps its id, whether it applied, and its
// code by number.
func (c *Card) setLastCommand(o CommandOutcome) {
	code, ok := commandCode(o.Code)
	if !ok {
		panic("card: a command outcome with the code " + o.Code + ", not in commandCodes")
	}
	c.lastCmdID, c.lastCmdApplied, c.lastCmdCode, c.dirty = o.ID, o.Applied, code, true
}

// lastCommand is the outcome of the card's latest manual command.
func (c *Card) lastCommand() CommandOutcome {
	return CommandOutcome{ID: c.lastCmdID, Applied: c.lastCmdApplied, Code: commandCodes[c.lastCmdCode]}
}
