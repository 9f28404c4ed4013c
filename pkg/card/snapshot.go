package card

import (
	"cmp"
	"container/heap"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
)

// snapshot is the serialized form of a Partition. Its JSON is stable: maps
// are written as sorted lists, so equal states give equal bytes.
type snapshot struct {
	Version  int               `json:"version"`
	Now      int64             `json:"now"`
	Plans    []PlanChanged     `json:"plans"`
	Accounts []accountSnapshot `json:"accounts"`
	Pools    []poolSnapshot    `json:"pools,omitempty"`
	Cards    []cardSnapshot    `json:"cards"`
	Delta    bool              `json:"delta,omitempty"`
}

type accountSnapshot struct {
	AccountChanged
	Balance   int64    `json:"balance"`
	InArrears bool     `json:"in_arrears,omitempty"`
	LowWarned bool     `json:"low_warned,omitempty"`
	Payments  []string `json:"payments,omitempty"`
	Charges   []string `json:"charges,omitempty"`
}

type poolSnapshot struct {
	PoolChanged
	Cycle     [2]int64 `json:"cycle"`
	Usage     uint64   `json:"usage"`
	Exhausted bool     `json:"exhausted,omitempty"`
}

type cardSnapshot struct {
	ICCID      string   `json:"iccid"`
	Ord        int      `json:"ord"`
	Account    string   `json:"account"`
	Plan       string   `json:"plan"`
	Carrier    string   `json:"carrier"`
	IMSI       string   `json:"imsi,omitempty"`
	MSISDN     string   `json:"msisdn,omitempty"`
	Pool       string   `json:"pool,omitempty"`
	AutoStop   bool     `json:"auto_stop,omitempty"`
	ValidFrom  int64    `json:"valid_from,omitempty"`
	ValidUntil int64    `json:"valid_until,omitempty"`
	ExpiredAt  int64    `json:"expired_at,omitempty"`
	Cancelled  bool     `json:"cancelled,omitempty"`
	Cycle      [2]int64 `json:"cycle"`
	Usage      uint64   `json:"usage"`
	Overshoot  uint64   `json:"overshoot,omitempty"`
	Charged    uint64   `json:"charged,omitempty"`
	Reasons    Reasons  `json:"reasons,omitempty"`
	// device binding (device.go): the bound and last devices, the card's options
	IMEIBound  uint64 `json:"imei_bound,omitempty"`
	IMEILast   uint64 `json:"imei_last,omitempty"`
	IMEISince  int64  `json:"imei_since,omitempty"`
	BindFirst  bool   `json:"bind_first,omitempty"`
	StopOnIMEI bool   `json:"stop_on_imei,omitempty"`
	// the anomaly rule (anomaly.go): the card's option and its day ring
	StopOnAnomaly bool           `json:"stop_on_anomaly,omitempty"`
	Day           int32          `json:"day,omitempty"`
	DayBytes      uint64         `json:"day_bytes,omitempty"`
	DaysPast      []dayBytes     `json:"days_past,omitempty"` // the days before it, the day before first
	DaysKnown     uint8          `json:"days_known,omitempty"`
	DayTold       bool           `json:"day_told,omitempty"`
	Warned        warnings       `json:"warned,omitempty"`
	Closed        [][3]uint64    `json:"closed,omitempty"` // start, usage, charged
	LastCmd       CommandOutcome `json:"last_cmd"`
	KeepFrom      int64          `json:"keep_from,omitempty"`
	// Filters holds the record-id filters, one per cycle slot: bucket
	// bits, a state byte (0 bucketed, 1 saturated, 2 young, 3 coded, then
	// its group bits and a zero), then the slot's 16-bit words,
	// little-endian.
	Filters [][]byte `json:"filters,omitempty"`
	// Recent holds the ids counted since the last TakeIDs, 16 bytes each
	// (id hash, packed content hash and cycle; little-endian), sorted by id
	// hash: in a whole snapshot, where they are still the card's own.
	Recent []byte `json:"recent,omitempty"`
	// Added holds, in a delta, the same for the ids counted since the last
	// checkpoint (the index holds them from the checkpoint on): the filters
	// of the card's previous piece plus these are its filters now. A card
	// whose filter slots moved (a cycle rolled over) has Filters instead.
	Added []byte `json:"added,omitempty"`
}

// snapshotVersion is the version written (binary pieces, piece.go); 7
// (binary, before the device binding) is read too, and so are 6 and 5
// (before young filter slots, a subset of 6), which were JSON.
const (
	snapshotVersion       = 8
	firstBinaryVersion    = 7 // 8 adds the device binding (flagDevice)
	lastJSONVersion       = 6
	oldestSnapshotVersion = 5
)

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// head is the partition-wide part of the state: the log's time, plans,
// accounts and pools; with changed, only the plans, accounts and pools
// changed since the last checkpoint (all plans when one did: they are
// few), and it marks them as checkpointed.
func (p *Partition) head(changed bool) *snapshot {
	s := &snapshot{Version: snapshotVersion, Now: p.now}
	if !changed || p.plansDirty {
		for _, pl := range p.plans {
			s.Plans = append(s.Plans, pl.PlanChanged)
		}
		sort.Slice(s.Plans, func(i, j int) bool { return s.Plans[i].PlanID < s.Plans[j].PlanID })
	}
	if changed {
		p.plansDirty = false
	}
	for _, a := range p.accOrder {
		if changed && !a.dirty {
			continue
		}
		if changed {
			a.dirty = false
		}
		s.Accounts = append(s.Accounts, accountSnapshot{
			AccountChanged: AccountChanged{AccountID: a.id, CreditLimitFen: a.creditLimit, LowBalanceFen: a.lowBalance, AutoResumeOnPayment: a.autoResume},
			Balance:        a.balance, InArrears: a.inArrears, LowWarned: a.lowWarned,
			Payments: sortedKeys(a.payments), Charges: sortedKeys(a.charges),
		})
	}
	for _, po := range p.poolOrd {
		if changed && !po.dirty {
			continue
		}
		if changed {
			po.dirty = false
		}
		s.Pools = append(s.Pools, poolSnapshot{PoolChanged: po.PoolChanged, Cycle: [2]int64{po.cycle.Start, po.cycle.End}, Usage: po.usage, Exhausted: po.exhausted})
	}
	return s
}

// snapshot modes: a whole state (ids counted since the last TakeIDs stay
// the card's), a checkpoint's base or delta (they go to the index).
const (
	modeWhole = iota
	modeBase
	modeDelta
)

func (c *Card) snapshot(mode int) cardSnapshot {
	cs := cardSnapshot{
		ICCID: c.iccid, Ord: int(c.ord), Account: c.account, Plan: c.planID, Carrier: c.carrier,
		IMSI: c.imsi, MSISDN: c.msisdn, Pool: c.poolID, AutoStop: c.autoStop,
		ValidFrom: c.validFrom, ValidUntil: c.validUntil, ExpiredAt: c.expiredAt, Cancelled: c.cancelled,
		Cycle: [2]int64{c.cycle.Start, c.cycle.End}, Usage: c.usage, Overshoot: c.overshoot, Charged: c.charged,
		Reasons: c.reasons, Warned: c.warned, LastCmd: c.lastCommand(), KeepFrom: c.keepFrom,
		IMEIBound: uint64(c.imeiBound), IMEILast: uint64(c.imeiLast), IMEISince: c.imeiSince, BindFirst: c.bindFirst, StopOnIMEI: c.stopOnIMEI,
		StopOnAnomaly: c.stopOnAnomaly, Day: c.days.day, DayBytes: c.days.today, DaysKnown: c.days.known, DayTold: c.days.told,
	}
	if c.days.day != 0 {
		cs.DaysPast = c.days.past[:]
	}
	for _, cl := range c.closed {
		cs.Closed = append(cs.Closed, [3]uint64{uint64(cl.start), cl.usage, cl.charged})
	}
	switch {
	case mode == modeWhole:
		cs.Recent = encodeSeen(&c.recent)
	case mode == modeDelta && !c.fpsMoved:
		cs.Added = encodeSeen(&c.recent)
		return cs
	}
	filters := make([][]byte, len(c.fps))
	for i := range c.fps {
		f := &c.fps[i]
		b := make([]byte, 2, 4+2*len(f.data))
		b[0] = f.k
		switch {
		case f.saturated:
			b[1] = 1
		case f.young:
			b[1] = 2
		case f.coded:
			b[1] = 3
			b = append(b, f.hb, 0)
		}
		for _, w := range f.data {
			b = binary.LittleEndian.AppendUint16(b, w)
		}
		filters[i] = b
	}
	cs.Filters = filters // empty slots too: a piece says exactly what the card holds
	return cs
}

// MarshalSnapshot encodes the whole state as one piece. Equal states give
// equal bytes.
func (p *Partition) MarshalSnapshot() ([]byte, error) {
	b, err := encodePiece(p.head(false), len(p.order), len(p.order)*p.cardBytes(), func(emit func(*cardSnapshot)) {
		for _, c := range p.order {
			cs := c.snapshot(modeWhole)
			emit(&cs)
		}
	})
	if len(p.order) > 0 {
		p.pieceCardBytes = len(b) / len(p.order)
	}
	return b, err
}

// cardBytes is about what a card takes in a piece: as in the last piece.
func (p *Partition) cardBytes() int {
	if p.pieceCardBytes == 0 {
		return 256
	}
	return p.pieceCardBytes + p.pieceCardBytes/8
}

// MarshalBase encodes the whole state for a checkpoint as pieces of at
// most cardsPerPiece cards each, the first with the head, and marks every
// card as checkpointed. The ids counted since the last TakeIDs are not in
// it: the caller takes them next, for the index.
func (p *Partition) MarshalBase(cardsPerPiece int) ([][]byte, error) {
	head := p.head(false)
	p.head(true) // and mark the head checkpointed
	return p.encodeCards(head, p.order, cardsPerPiece, modeBase)
}

// encodeCards writes cards as checkpoint pieces of at most perPiece cards,
// the first with head, and marks them as checkpointed.
func (p *Partition) encodeCards(head *snapshot, cards []*Card, perPiece, mode int) ([][]byte, error) {
	perPiece = max(perPiece, 1)
	var pieces [][]byte
	for i := 0; i == 0 || i < len(cards); i += perPiece {
		part := cards[i:min(i+perPiece, len(cards))]
		head.Delta = mode == modeDelta
		b, err := encodePiece(head, len(part), len(part)*p.cardBytes(), func(emit func(*cardSnapshot)) {
			for _, c := range part {
				cs := c.snapshot(mode)
				emit(&cs)
				c.dirty, c.fpsMoved = false, false
			}
		})
		if err != nil {
			return nil, err
		}
		pieces = append(pieces, b)
		if len(part) > 0 {
			p.pieceCardBytes = len(b) / len(part)
		}
		head = &snapshot{Version: snapshotVersion, Now: p.now}
	}
	return pieces, nil
}

// MarshalDelta encodes what changed since the last MarshalDelta or
// MarshalBase: what changed of the head and every card the fold changed,
// with the ids it counted since (what they add to its filters), in pieces
// of at most cardsPerPiece cards, the first with the head, and marks them
// as checkpointed. It costs what changed, not the whole state. It also
// reports how many cards it holds. The caller takes the ids next
// (TakeIDs), for the index.
func (p *Partition) MarshalDelta(cardsPerPiece int) ([][]byte, int, error) {
	var dirty []*Card
	for _, c := range p.order {
		if c.dirty {
			dirty = append(dirty, c)
		}
	}
	pieces, err := p.encodeCards(p.head(true), dirty, cardsPerPiece, modeDelta)
	return pieces, len(dirty), err
}

// Restorer rebuilds a Partition from checkpoint pieces: the base's, then
// the deltas', in the order they were written. Later pieces replace what
// earlier ones said of a card, and their head replaces the head.
type Restorer struct {
	p     *Partition
	cards map[string]*Card
}

// NewRestorer starts from empty state.
func NewRestorer() *Restorer { return &Restorer{p: NewPartition(), cards: map[string]*Card{}} }

// Add applies one piece.
func (r *Restorer) Add(piece []byte) error {
	s, err := decodePiece(piece)
	if err != nil {
		return err
	}
	p := r.p
	p.now = max(p.now, s.Now)
	if len(s.Plans) > 0 || len(s.Accounts) > 0 || len(s.Pools) > 0 {
		if err := r.setHead(s, s.Delta); err != nil {
			return err
		}
	}
	for i := range s.Cards {
		cs := &s.Cards[i]
		old := r.cards[cs.ICCID]
		if !s.Delta {
			old = nil // a base says everything of its cards
		}
		c, err := r.card(cs, old)
		if err != nil {
			return fmt.Errorf("checkpoint card %s: %w", cs.ICCID, err)
		}
		if prev := r.cards[c.iccid]; prev != nil {
			*prev = *c
		} else {
			r.cards[c.iccid] = c
		}
	}
	return nil
}

// setHead takes a piece's head: a base's replaces everything; a delta's
// plans, accounts and pools replace those of the same ids (a new one goes
// after the others, as it was created after them).
func (r *Restorer) setHead(s *snapshot, delta bool) error {
	p := r.p
	if !delta {
		p.plans, p.accounts, p.pools, p.accOrder, p.poolOrd = map[string]*plan{}, map[string]*account{}, map[string]*pool{}, nil, nil
	}
	for _, pc := range s.Plans {
		in := Input{Type: TypePlanChanged, Plan: &pc}
		if out := p.applyPlan(&in, nil); len(out) > 0 {
			return fmt.Errorf("checkpoint plan %q: %s", pc.PlanID, out[0].Detail)
		}
	}
	for _, as := range s.Accounts {
		a := p.account(as.AccountID)
		a.creditLimit, a.lowBalance, a.autoResume = as.CreditLimitFen, as.LowBalanceFen, as.AutoResumeOnPayment
		a.balance, a.inArrears, a.lowWarned = as.Balance, as.InArrears, as.LowWarned
		a.payments, a.charges = toSet(as.Payments), toSet(as.Charges)
	}
	for _, ps := range s.Pools {
		loc, err := Zone(ps.TimeZone)
		if err != nil {
			return fmt.Errorf("checkpoint pool %q: %w", ps.PoolID, err)
		}
		po := &pool{PoolChanged: ps.PoolChanged, account: ps.AccountID, loc: loc, anchor: max(ps.CycleAnchorDay, 1),
			cycle: Cycle{ps.Cycle[0], ps.Cycle[1]}, usage: ps.Usage, exhausted: ps.Exhausted}
		if old := p.pools[po.PoolID]; old != nil {
			*old = *po
			continue
		}
		p.pools[po.PoolID] = po
		p.poolOrd = append(p.poolOrd, po)
	}
	return nil
}

func (r *Restorer) card(cs *cardSnapshot, old *Card) (*Card, error) {
	p := r.p
	c := &Card{
		iccid: cs.ICCID, ord: int32(cs.Ord), account: p.intern(cs.Account), planID: p.intern(cs.Plan), carrier: p.intern(cs.Carrier),
		imsi: cs.IMSI, msisdn: cs.MSISDN, poolID: p.intern(cs.Pool), autoStop: cs.AutoStop,
		validFrom: cs.ValidFrom, validUntil: cs.ValidUntil, expiredAt: cs.ExpiredAt, cancelled: cs.Cancelled,
		cycle: Cycle{cs.Cycle[0], cs.Cycle[1]}, usage: cs.Usage, overshoot: cs.Overshoot, charged: cs.Charged,
		reasons: cs.Reasons, warned: cs.Warned, keepFrom: cs.KeepFrom,
		imeiBound: device(cs.IMEIBound), imeiLast: device(cs.IMEILast), imeiSince: cs.IMEISince, bindFirst: cs.BindFirst, stopOnIMEI: cs.StopOnIMEI,
		stopOnAnomaly: cs.StopOnAnomaly, days: dayRing{day: cs.Day, today: cs.DayBytes, known: min(cs.DaysKnown, anomalyDays), told: cs.DayTold},
	}
	if cs.Day < 0 || cs.Day > maxDay {
		return nil, fmt.Errorf("card %s: day %d of its ring is out of range", cs.ICCID, cs.Day)
	}
	code, ok := commandCode(cs.LastCmd.Code)
	if !ok {
		return nil, fmt.Errorf("card %s: a last command with the code %q", cs.ICCID, cs.LastCmd.Code)
	}
	c.lastCmdID, c.lastCmdApplied, c.lastCmdCode = cs.LastCmd.ID, cs.LastCmd.Applied, code
	copy(c.days.past[:], cs.DaysPast)
	for i, cl := range cs.Closed {
		if i < RetainedCycles {
			c.closed[i] = closedCycle{start: int64(cl[0]), usage: cl[1], charged: cl[2]}
		}
	}
	if len(cs.Filters) > len(c.fps) {
		return nil, fmt.Errorf("%d filter slots, this build has %d", len(cs.Filters), len(c.fps))
	}
	for i, b := range cs.Filters {
		if len(b) < 2 || len(b)%2 != 0 || b[0] > maxBucketBits {
			return nil, fmt.Errorf("filter slot %d of %d bytes is malformed", i, len(b))
		}
		f := &c.fps[i]
		f.k, f.saturated, f.young, f.coded = b[0], b[1] == 1, b[1] == 2, b[1] == 3
		if f.coded {
			if len(b) < 4 || b[2] > fingerprintLen {
				return nil, fmt.Errorf("filter slot %d of %d bytes is malformed", i, len(b))
			}
			f.hb, b = b[2], append(b[:2:2], b[4:]...)
		}
		if n := (len(b) - 2) / 2; f.young {
			if n%2 != 0 || f.k != 0 {
				return nil, fmt.Errorf("filter slot %d: a young slot of %d words", i, n)
			}
			f.data = make([]uint16, n)
			for j := range f.data {
				f.data[j] = binary.LittleEndian.Uint16(b[2+2*j:])
			}
		} else if n > 0 {
			f.data = make([]uint16, n)
			for j := range f.data {
				f.data[j] = binary.LittleEndian.Uint16(b[2+2*j:])
			}
			if n < f.buckets()+1 || !f.wordsMatch(int(f.data[f.buckets()])) {
				return nil, fmt.Errorf("filter slot %d: offsets do not match its %d words", i, n)
			}
		}
	}
	if err := decodeSeen(cs.Recent, &c.recent); err != nil {
		return nil, err
	}
	switch {
	case cs.Filters == nil && old != nil:
		c.fps = old.fps // a delta's card whose slots stayed: its filters grow by what it added
	case cs.Filters == nil:
		c.fps[0] = openSlot(0) // a card provisioned since the last checkpoint, as provisioning opens it
	default:
		c.packClosed(p.plans[c.planID].slab())
	}
	if len(cs.Added) > 0 {
		var added idSet
		if err := decodeSeen(cs.Added, &added); err != nil {
			return nil, err
		}
		pl := r.p.plans[c.planID]
		if pl == nil {
			return nil, fmt.Errorf("unknown plan %q", c.planID)
		}
		added.each(func(k uint64, v seenRecord) { c.fps[c.slotOf(v.cycleStart(), pl)].add(k) })
	}
	return c, nil
}

// Finish returns the restored state. The head must name every plan and
// account its cards use, and the cards' provisioning order must be whole.
func (r *Restorer) Finish() (*Partition, error) {
	p := r.p
	order := make([]*Card, len(r.cards))
	for _, c := range r.cards {
		if c.ord < 0 || int(c.ord) >= len(order) || order[c.ord] != nil {
			return nil, fmt.Errorf("checkpoint card %s has provisioning order %d of %d cards", c.iccid, c.ord, len(order))
		}
		if _, ok := p.plans[c.planID]; !ok {
			return nil, fmt.Errorf("checkpoint card %s: unknown plan %q", c.iccid, c.planID)
		}
		order[c.ord] = c
	}
	for _, c := range order {
		acct := p.account(c.account)
		c.account = acct.id
		p.addCard(c)
		c.due = p.deadline(c)
		p.relist(c)
	}
	heap.Init(&p.due)
	// sorted for lists now, while the partition is restoring, not at the
	// first list while it folds
	p.listed, p.listedN = mergeSorted(p.listed, 0)
	p.head(true) // what was restored is checkpointed
	return p, nil
}

func toSet(ids []string) map[string]bool {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// UnmarshalSnapshot restores state written by MarshalSnapshot.
func UnmarshalSnapshot(b []byte) (*Partition, error) {
	r := NewRestorer()
	if err := r.Add(b); err != nil {
		return nil, err
	}
	return r.Finish()
}

// encodeSeen writes the id set as (key, value) pairs in key order, so that
// a state has one encoding whatever the table's history.
func encodeSeen(seen *idSet) []byte {
	if seen.len() == 0 {
		return nil
	}
	pairs := make([][2]uint64, 0, seen.len())
	seen.each(func(k uint64, v seenRecord) { pairs = append(pairs, [2]uint64{k, uint64(v)}) })
	slices.SortFunc(pairs, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	b := make([]byte, 0, 16*len(pairs))
	for _, kv := range pairs {
		b = binary.LittleEndian.AppendUint64(b, kv[0])
		b = binary.LittleEndian.AppendUint64(b, kv[1])
	}
	return b
}

func decodeSeen(b []byte, into *idSet) error {
	if len(b)%16 != 0 {
		return fmt.Errorf("record id set of %d bytes is not a multiple of 16", len(b))
	}
	for ; len(b) > 0; b = b[16:] {
		into.put(binary.LittleEndian.Uint64(b), seenRecord(binary.LittleEndian.Uint64(b[8:])))
	}
	return nil
}
