package card

// Outcomes the pipeline's own roles report back into the log: folded like
// any input, so that what they emit gets its id and position, reaches the
// card's history, ClickHouse and the stream, and a replay emits it again.

// applyActuation emits what the card's carrier answered to an action: the
// card's state is not changed by it (the carrier follows cardmeter, not
// the other way round). A report for a card not known is refused.
func (p *Partition) applyActuation(in *Input, out []Emitted) []Emitted {
	r := in.Actuation
	c := p.cards[r.ICCID]
	if c == nil {
		return append(out, refused(in, r.ICCID, RefusedUnknownCard, "an actuation report for a card not provisioned"))
	}
	switch r.Action {
	case "stop", "resume", "cancel":
	default:
		return append(out, refused(in, r.ICCID, RefusedInvalid, "action "+r.Action+": one of stop, resume, cancel"))
	}
	typ := EmitActuationSucceeded
	if !r.OK {
		typ = EmitActuationFailed
	}
	cause := r.Cause
	if cause == "" {
		cause = "event:" + in.ID
	}
	return append(out, Emitted{Type: typ, ICCID: r.ICCID, AccountID: c.account, PlanID: c.planID, At: p.at(in), Cause: cause,
		Reasons: c.reasons, Code: r.Action, Detail: r.Detail, Carrier: r.Carrier, Cancelled: c.cancelled})
}

// applyWebhookDisabled emits that a webhook was disabled.
func (p *Partition) applyWebhookDisabled(in *Input, out []Emitted) []Emitted {
	w := in.Webhook
	if w.WebhookID == "" {
		return append(out, refused(in, "", RefusedInvalid, "a webhook notice without its webhook_id"))
	}
	return append(out, Emitted{Type: EmitWebhookDisabled, Webhook: w.WebhookID, At: p.at(in), Cause: "event:" + in.ID, Detail: w.Reason})
}

// applyDrift emits a reconciliation's finding.
func (p *Partition) applyDrift(in *Input, out []Emitted) []Emitted {
	d := in.Drift
	if d.Carrier == "" {
		return append(out, refused(in, "", RefusedInvalid, "a drift report without its carrier"))
	}
	return append(out, Emitted{Type: EmitDriftDetected, Carrier: d.Carrier, At: p.at(in), Cause: "event:" + in.ID,
		Drift: d.Counts, Cards: d.Cards, Amount: int64(d.Sent)})
}

// applyResync emits the action the card's state needs at its carrier now,
// at this place in its history: stop for a stopped card, resume for one in
// service, cancel for a cancelled one. The actuator sends it in order with
// the card's other actions, so a resync asked for before a resume cannot
// undo it.
func (p *Partition) applyResync(in *Input, out []Emitted) []Emitted {
	r := in.Resync
	c, ok := p.card(r.ICCID)
	if !ok {
		return append(out, refused(in, r.ICCID, RefusedUnknownCard, "a resync of a card not provisioned"))
	}
	action := "resume"
	switch c.status() {
	case Cancelled:
		action = "cancel"
	case Stopped:
		action = "stop"
	}
	return append(out, Emitted{Type: EmitResyncRequested, ICCID: r.ICCID, AccountID: c.account, PlanID: c.planID, At: p.at(in),
		Cause: "event:" + in.ID, Reasons: c.reasons, Code: action, Detail: r.Reason, Operator: r.By, Cancelled: c.cancelled})
}
