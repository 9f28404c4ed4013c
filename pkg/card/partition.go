// Package card is the pure domain core of cardmeter: the state of the
// accounts, cards and pools of one partition and the fold that applies the
// log's events to it, in log order, returning the events it emits. Every
// rule of DOMAIN.md lives here, one file per rule:
//
//	usage.go    usage records: cycles, dedupe, late records, over-quota stop
//	account.go  balances, charges, payments, arrears stop
//	expiry.go   validity, expiry stop, keep-number fee, renewal, cancellation
//	command.go  manual stop and resume
//	warning.go  usage, expiry, balance and forecast warnings
//	pool.go     data pools
//
// The fold reads no clock, does no I/O, draws no random numbers and starts
// no goroutines: time comes in events, so replaying a log gives the same
// state and the same emitted events, byte for byte. A Partition is not safe
// for concurrent use; its owner (one projector per partition) serializes
// access.
package card

import (
	"fmt"
	"strconv"
	"time"

	"github.com/google/btree"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// Partition is the folded state of the accounts and cards of one partition.
type Partition struct {
	now      int64 // the log's time: the latest clock tick applied
	plans    map[string]*plan
	accounts map[string]*account
	cards    map[string]*Card
	byNumber map[uint64]*Card // the cards whose ICCID packs into 64 bits (every valid one): the usage fold's lookup
	pools    map[string]*pool
	order    []*Card // cards in provisioning order: the order ticks visit them
	// listed is every card, for ListCards: the first listedN in ICCID
	// order, then those filed since, which the next list sorts and merges
	// in (a page starts where its cursor falls instead of sorting every
	// card; filing a card costs an append).
	listed     []*Card
	listedN    int
	lists      [listCount]*btree.BTreeG[*Card] // the sparse filters' cards (lists.go)
	strs       map[string]string               // interned carrier, plan and account names: one copy for many cards
	accOrder   []*account                      // accounts in creation order
	poolOrd    []*pool
	due        deadlines // cards by the time a tick next changes them
	plansDirty bool      // a plan changed since the last checkpoint
	// pieceCardBytes is what a card took in the last checkpoint piece: the
	// next piece's buffer is sized from it (a buffer grown by doubling
	// cleared and copied a third of a checkpoint's time). A hint only.
	pieceCardBytes int
}

type plan struct {
	PlanChanged
	loc    *time.Location
	anchor int
	// the zone's offset and the span it holds for, as dayOf last found
	// them (anomaly.go): derived, not state; an empty span at first
	zoneOff, zoneLo, zoneHi int64
	packs                   *slab // where its cards' closed filter slots are packed: they roll over together
}

func (pl *plan) thresholds() []int {
	if len(pl.WarningPct) == 0 {
		return defaultWarningPct
	}
	return pl.WarningPct
}

var defaultWarningPct = []int{80, 90, 100}

// Card is the state of one card. Its fields change only through the fold.
// Its fields are ordered to leave no padding: a card fits in 480 bytes, Go's
// size class (TestCardFitsItsSizeClass), and a million of them are most
// of the projector's heap.
type Card struct {
	iccid, account, planID, carrier string
	imsi, msisdn, poolID            string
	validFrom, validUntil           int64
	expiredAt                       int64 // when the expiry stop was raised; 0 when valid
	cycle                           Cycle
	usage                           uint64
	overshoot                       uint64                      // usage past quota when the over-quota stop fired
	charged                         uint64                      // overage MB already charged this cycle
	closed                          [RetainedCycles]closedCycle // most recent first
	lastCmdID                       string                      // the latest manual command (see lastCommand)

	// The record ids the card remembers (DOMAIN.md: counted once however
	// late): recent holds, exactly, those counted since the last
	// checkpoint; the exact index off the heap holds the older ones; fps
	// filters all of them, by cycle, so that a new id needs no lookup.
	recent   idSet                      // carrier+id hash -> content and cycle
	fps      [RetainedCycles + 1]fpSlot // the current cycle's, then closed[0]'s, closed[1]'s
	keepFrom int64                      // ids of cycles that started before this are forgotten

	due  int64 // the earliest time a tick changes the card
	ord  int32 // provisioning order; the card in the record-id index (key)
	hidx int32 // position in the deadline heap

	// device binding (device.go): the bound device and the last one seen,
	// and since when the binding holds (records that started before it
	// prove nothing against it)
	imeiBound, imeiLast device
	imeiSince           int64
	days                dayRing // recent daily usage (anomaly.go)

	warned   warnings // fired this cycle (or validity period)
	lists    uint16   // the list indexes it is in (lists.go)
	reasons  Reasons
	autoStop bool
	// the latest manual command's outcome (lastCommand)
	lastCmdApplied bool
	lastCmdCode    uint8
	// the card's own options (its plan's apply too): device.go, anomaly.go
	bindFirst, stopOnIMEI, stopOnAnomaly bool
	cancelled                            bool
	dirty                                bool // changed since the last checkpoint
	fpsMoved                             bool // its filter slots moved (a rollover) since the last checkpoint
}

// seenRecord packs, in 8 bytes (a card remembers many), the top 40 bits of
// the content hash of a record id's first arrival (cdr.Record.ContentHash)
// and the start of the cycle it counted in, in 15-minute units (every time
// zone's offset is a multiple of 15 minutes; 24 bits reach the year 2449).
type seenRecord uint64

const seenCycleBits = 24

func packSeen(content uint64, cycleStart int64) seenRecord {
	return seenRecord(content&^(1<<seenCycleBits-1) | uint64(cycleStart/900)&(1<<seenCycleBits-1))
}

// sameContent reports whether a record's content hash matches.
func (s seenRecord) sameContent(content uint64) bool {
	return uint64(s)>>seenCycleBits == content>>seenCycleBits
}

// cycleStart is the start of the cycle the record counted in.
func (s seenRecord) cycleStart() int64 { return int64(uint64(s)&(1<<seenCycleBits-1)) * 900 }

type closedCycle struct {
	start   int64
	usage   uint64
	charged uint64 // overage MB charged for it
}

// CommandOutcome is how the fold decided a card's latest manual command.
type CommandOutcome struct {
	ID      string `json:"id"`
	Applied bool   `json:"applied"`
	Code    string `json:"code,omitempty"` // refusal code when not applied
}

// RetainedCycles is how many closed cycles a card remembers record ids for.
// A record older than that is refused as too late, so a record id is never
// counted twice however late it is re-sent.
const RetainedCycles = 2

// NewPartition returns empty state.
func NewPartition() *Partition {
	return &Partition{plans: map[string]*plan{}, accounts: map[string]*account{}, cards: map[string]*Card{}, pools: map[string]*pool{},
		byNumber: map[uint64]*Card{}, strs: map[string]string{}}
}

// addCard files a new card.
func (p *Partition) addCard(c *Card) {
	p.cards[c.iccid] = c
	if n, ok := cdr.PackICCID(c.iccid); ok {
		p.byNumber[n] = c
	}
	c.ord = int32(len(p.order))
	p.order = append(p.order, c)
	p.listed = append(p.listed, c)
	p.account(c.account).cards = append(p.account(c.account).cards, c)
	c.due = never // until the provisioning that files it schedules it
	p.due.push(c)
}

// card finds a card by ICCID. A map keyed by the packed number finds it
// without reading the key's bytes elsewhere in memory, as a string key
// makes a lookup do: it is the first step of folding every record.
func (p *Partition) card(iccid string) (*Card, bool) {
	if n, ok := cdr.PackICCID(iccid); ok {
		c, found := p.byNumber[n]
		return c, found
	}
	c, found := p.cards[iccid]
	return c, found
}

// intern returns one shared copy of a short, often repeated string.
func (p *Partition) intern(s string) string {
	if v, ok := p.strs[s]; ok {
		return v
	}
	p.strs[s] = s
	return s
}

// Now is the log's time as this partition has seen it.
func (p *Partition) Now() int64 { return p.now }

// Cards is the number of cards.
func (p *Partition) Cards() int { return len(p.cards) }

// Apply folds one non-usage input event, appending what it emits to out.
// It returns ErrUnknownInput for a type it does not know, or for a known
// type without its body; an event that breaks a rule is not applied and
// emits EmitInputRefused or EmitCommandRefused.
func (p *Partition) Apply(in *Input, out []Emitted) ([]Emitted, error) {
	n := len(out)
	out, err := p.apply(in, out)
	p.relistEmitted(out[n:])
	return out, err
}

func (p *Partition) apply(in *Input, out []Emitted) ([]Emitted, error) {
	missing := func() ([]Emitted, error) {
		return out, fmt.Errorf("%w: %s without its body", ErrUnknownInput, in.Type)
	}
	switch in.Type {
	case TypePlanChanged:
		if in.Plan == nil {
			return missing()
		}
		return p.applyPlan(in, out), nil
	case TypeCardProvisioned:
		if in.Card == nil {
			return missing()
		}
		return p.applyProvision(in, out), nil
	case TypeClockTicked:
		return p.applyTick(in.At, out), nil
	case TypeAccountChanged:
		if in.Account == nil {
			return missing()
		}
		return p.applyAccount(in, out), nil
	case TypePaymentReceived:
		if in.Payment == nil {
			return missing()
		}
		return p.applyPayment(in, out), nil
	case TypeChargeRequested:
		if in.Charge == nil {
			return missing()
		}
		return p.applyCharge(in, out), nil
	case TypePoolChanged:
		if in.Pool == nil {
			return missing()
		}
		return p.applyPool(in, out), nil
	case TypeCardRenewed:
		if in.Renewal == nil {
			return missing()
		}
		return p.applyRenewal(in, out), nil
	case TypeStopRequested, TypeResumeRequested:
		if in.Command == nil {
			return missing()
		}
		return p.applyCommand(in, out), nil
	case TypeRebindRequested:
		if in.Rebind == nil {
			return missing()
		}
		return p.applyRebind(in, out), nil
	case TypeActuationReported:
		if in.Actuation == nil {
			return missing()
		}
		return p.applyActuation(in, out), nil
	case TypeWebhookDisabled:
		if in.Webhook == nil {
			return missing()
		}
		return p.applyWebhookDisabled(in, out), nil
	case TypeDriftReported:
		if in.Drift == nil {
			return missing()
		}
		return p.applyDrift(in, out), nil
	case TypeResyncRequested:
		if in.Resync == nil {
			return missing()
		}
		return p.applyResync(in, out), nil
	}
	return out, fmt.Errorf("%w: %q", ErrUnknownInput, in.Type)
}

// at is the time an input takes effect: its stamp, never before the log's.
func (p *Partition) at(in *Input) int64 { return max(p.now, in.At) }

func refused(in *Input, iccid, code, detail string) Emitted {
	return Emitted{Type: EmitInputRefused, ICCID: iccid, At: in.At, Cause: "event:" + in.ID, Code: code, Detail: detail}
}

func (p *Partition) applyPlan(in *Input, out []Emitted) []Emitted {
	pc := *in.Plan
	if err := pc.Validate(); err != nil {
		return append(out, refused(in, "", RefusedInvalid, "plan "+pc.PlanID+": "+err.Error()))
	}
	loc, _ := Zone(pc.TimeZone)
	anchor := pc.CycleAnchorDay
	if anchor == 0 {
		anchor = 1
	}
	old := p.plans[pc.PlanID]
	p.plans[pc.PlanID] = &plan{PlanChanged: pc, loc: loc, anchor: anchor}
	if old != nil {
		p.plans[pc.PlanID].packs = old.packs
	}
	p.plansDirty = true
	// a plan's time zone moves its cards' cancellation deadlines; its zone
	// or anchor day, the cycles their filter slots stand for
	moved := old != nil && (old.loc.String() != loc.String() || old.anchor != anchor)
	for _, c := range p.order {
		if c.planID == pc.PlanID {
			p.reschedule(c)
			if moved {
				c.fpsMoved, c.dirty = true, true
			}
		}
	}
	return out
}

func (p *Partition) applyProvision(in *Input, out []Emitted) []Emitted {
	cp := in.Card
	cause := "event:" + in.ID
	pl, ok := p.plans[cp.PlanID]
	if !ok {
		return append(out, refused(in, cp.ICCID, RefusedUnknownPlan, "unknown plan "+strconv.Quote(cp.PlanID)))
	}
	c, exists := p.cards[cp.ICCID]
	if exists && c.account != cp.AccountID {
		return append(out, refused(in, cp.ICCID, RefusedOtherAccount, "card belongs to account "+strconv.Quote(c.account)+"; moving a card between accounts is not supported"))
	}
	if exists && c.cancelled {
		return append(out, refused(in, cp.ICCID, RefusedCancelled, "card is cancelled"))
	}
	if (cp.IMEI != "" && deviceOf(cp.IMEI) == 0) || (cp.BindIMEI != "" && cp.BindIMEI != BindFirstSeen) {
		return append(out, refused(in, cp.ICCID, RefusedInvalid, "imei or bind_imei: not an IMEI, or not \"first_seen\""))
	}
	var pl0 *pool
	if cp.PoolID != "" {
		if pl0 = p.pools[cp.PoolID]; pl0 == nil || pl0.account != cp.AccountID {
			return append(out, refused(in, cp.ICCID, RefusedUnknownPool, "unknown pool "+strconv.Quote(cp.PoolID)+" for account "+strconv.Quote(cp.AccountID)))
		}
	}
	now := p.at(in)
	acct := p.account(cp.AccountID)
	if !exists {
		c = &Card{iccid: cp.ICCID, account: acct.id}
		c.fps[0] = openSlot(0)
		c.cycle = CycleAt(now, pl.loc, pl.anchor)
		p.addCard(c)
	}
	if exists && c.planID != pl.PlanID {
		c.fpsMoved = true // its filter slots stood for the old plan's cycles
	}
	c.planID, c.carrier, c.imsi, c.msisdn, c.poolID = pl.PlanID, p.intern(cp.Carrier), cp.IMSI, cp.MSISDN, p.intern(cp.PoolID)
	c.autoStop = cp.AutoStopOverQuota
	c.bindFirst, c.stopOnIMEI, c.stopOnAnomaly = cp.BindIMEI == BindFirstSeen, cp.StopOnIMEIChange, cp.StopOnAnomaly
	if d := deviceOf(cp.IMEI); d != 0 && d != c.imeiBound {
		// bound at provisioning; a device-mismatch stop stands until an
		// operator lifts it
		c.imeiBound, c.imeiLast, c.imeiSince = d, d, now
	}
	c.validFrom = cp.ValidFrom
	if c.validFrom == 0 && !exists {
		c.validFrom = now
	}
	if cp.ValidUntil != 0 {
		c.validUntil = cp.ValidUntil
	} else if !exists && pl.TermMonths > 0 {
		c.validUntil = time.Unix(c.validFrom, 0).In(pl.loc).AddDate(0, pl.TermMonths, 0).Unix()
	}
	out = append(out, c.emit(EmitProvisioned, now, cause, pl))
	if !exists && pl.MonthlyFeeFen > 0 {
		out = p.charge(acct, c, pl.MonthlyFeeFen, "monthly_fee", now, cause, out)
	}
	if acct.inArrears && !c.reasons.Has(ReasonArrears) {
		out = c.raise(ReasonArrears, now, cause, pl, out)
	}
	// Turning the option off lifts a standing over-quota stop; turning it
	// on stops a card already over quota.
	if !c.autoStop && c.reasons.Has(ReasonOverQuota) {
		out = c.clear(ReasonOverQuota, now, cause, pl, out)
	}
	if c.poolID == "" && c.autoStop && c.usage > pl.QuotaBytes && !c.reasons.Has(ReasonOverQuota) {
		c.overshoot = c.usage - pl.QuotaBytes
		out = c.raise(ReasonOverQuota, now, cause, pl, out)
	}
	if c.reasons.Has(ReasonPool) && (pl0 == nil || !pl0.exhausted || !c.autoStop) {
		out = c.clear(ReasonPool, now, cause, pl, out)
	}
	if pl0 != nil && pl0.exhausted && c.autoStop && !c.reasons.Has(ReasonPool) {
		out = c.raise(ReasonPool, now, cause, pl, out)
	}
	out = p.checkValidity(c, now, cause, out)
	if !c.cancelled {
		out = p.expiryWarnings(c, now, cause, out)
	}
	c.dirty = true
	p.reschedule(c)
	return out
}

// applyTick moves the log's time forward. Pools roll; then every card with
// a deadline due, in provisioning order, passes each cycle boundary and
// validity deadline up to the new time in turn, so a jump of months charges
// each month. A card with nothing due is not visited: advancing it would
// change nothing.
func (p *Partition) applyTick(at int64, out []Emitted) []Emitted {
	if at <= p.now {
		return out // ticks never move time back; a repeated tick is a no-op
	}
	p.now = at
	cause := "tick:" + strconv.FormatInt(at, 10)
	for _, pl := range p.poolOrd {
		out = p.rollPool(pl, at, cause, out)
	}
	for _, c := range p.due.popDue(at) {
		out = p.advance(c, at, cause, out)
	}
	return out
}

// advance brings a card to time t: deadlines and cycle boundaries in the
// order they fall, then the warnings that look ahead.
func (p *Partition) advance(c *Card, t int64, cause string, out []Emitted) []Emitted {
	for !c.cancelled && c.cycle.End <= t {
		boundary := c.cycle.End
		out = p.checkValidity(c, boundary, cause, out)
		if c.cancelled {
			break
		}
		out = p.rollover(c, boundary, cause, out)
	}
	out = p.checkValidity(c, t, cause, out)
	if !c.cancelled {
		out = p.expiryWarnings(c, t, cause, out)
	}
	p.reschedule(c)
	return out
}

// rollover closes the card's cycle and opens the one starting at t: usage
// resets, the over-quota stop clears (自动超停 ends at cycle start),
// warnings re-arm, and the month's fee is charged: the plan's monthly fee,
// or the keep-number fee (停机保号费) while the card is expired.
func (p *Partition) rollover(c *Card, t int64, cause string, out []Emitted) []Emitted {
	pl := p.plans[c.planID]
	out = append(out, c.emit(EmitCycleClosed, t, cause, pl))
	copy(c.closed[1:], c.closed[:RetainedCycles-1])
	c.closed[0] = closedCycle{start: c.cycle.Start, usage: c.usage, charged: c.charged}
	c.cycle = CycleAt(t, pl.loc, pl.anchor)
	c.usage, c.overshoot, c.charged = 0, 0, 0
	if c.reasons.Has(ReasonOverQuota) {
		out = c.clear(ReasonOverQuota, t, cause, pl, out)
	}
	out = p.rearmCycleWarnings(c, t, cause, pl, out)
	acct := p.accounts[c.account]
	if c.expiredAt != 0 {
		out = p.charge(acct, c, KeepNumberFeeFen, "keep_number_fee", t, cause, out)
	} else if pl.MonthlyFeeFen > 0 {
		out = p.charge(acct, c, pl.MonthlyFeeFen, "monthly_fee", t, cause, out)
	}
	// Forget record ids of cycles older than the retention horizon: their
	// filter goes at once; the exact index drops their files later, and
	// until then an id it finds there from before keepFrom counts as
	// forgotten.
	c.keepFrom = p.horizon(c, pl)
	c.recent.keep(func(s seenRecord) bool { return s.cycleStart() >= c.keepFrom })
	n := c.fps[0].len()
	copy(c.fps[1:], c.fps[:RetainedCycles])
	c.fps[1].seal()
	for i := 1; i < len(c.fps); i++ {
		c.fps[i].code() // closed: coded, unless a late record uncoded it
	}
	c.fps[0] = openSlot(n)
	c.packClosed(pl.slab())
	c.dirty, c.fpsMoved = true, true
	return out
}

// horizon is the start of the oldest cycle whose record ids are retained.
func (p *Partition) horizon(c *Card, pl *plan) int64 {
	h := c.cycle.Start
	for i := 0; i < RetainedCycles; i++ {
		h = CycleAt(h-1, pl.loc, pl.anchor).Start
	}
	return h
}

func (c *Card) emit(t EmittedType, at int64, cause string, pl *plan) Emitted {
	e := Emitted{Type: t, ICCID: c.iccid, AccountID: c.account, At: at, Cause: cause, PlanID: c.planID,
		Reasons: c.reasons, Usage: c.usage, Overshoot: c.overshoot, Cycle: c.cycle, Until: c.validUntil}
	if pl != nil {
		e.Quota = pl.QuotaBytes
	}
	return e
}

func (c *Card) raise(r Reason, at int64, cause string, pl *plan, out []Emitted) []Emitted {
	if c.reasons.Has(r) {
		return out
	}
	c.reasons = c.reasons.With(r)
	c.dirty = true
	e := c.emit(EmitStopped, at, cause, pl)
	e.Reason = r
	return append(out, e)
}

func (c *Card) clear(r Reason, at int64, cause string, pl *plan, out []Emitted) []Emitted {
	if !c.reasons.Has(r) {
		return out
	}
	c.reasons = c.reasons.Without(r)
	c.dirty = true
	t := EmitStopCleared
	if c.reasons == 0 {
		t = EmitResumed
	}
	e := c.emit(t, at, cause, pl)
	e.Reason = r
	return append(out, e)
}
