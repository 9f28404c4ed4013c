package card

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
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
	ICCID      string         `json:"iccid"`
	Account    string         `json:"account"`
	Plan       string         `json:"plan"`
	Carrier    string         `json:"carrier"`
	IMSI       string         `json:"imsi,omitempty"`
	MSISDN     string         `json:"msisdn,omitempty"`
	Pool       string         `json:"pool,omitempty"`
	AutoStop   bool           `json:"auto_stop,omitempty"`
	ValidFrom  int64          `json:"valid_from,omitempty"`
	ValidUntil int64          `json:"valid_until,omitempty"`
	ExpiredAt  int64          `json:"expired_at,omitempty"`
	Cancelled  bool           `json:"cancelled,omitempty"`
	Cycle      [2]int64       `json:"cycle"`
	Usage      uint64         `json:"usage"`
	Overshoot  uint64         `json:"overshoot,omitempty"`
	Charged    uint64         `json:"charged,omitempty"`
	Reasons    Reasons        `json:"reasons,omitempty"`
	Warned     warnings       `json:"warned,omitempty"`
	Closed     [][3]uint64    `json:"closed,omitempty"` // start, usage, charged
	LastCmd    CommandOutcome `json:"last_cmd"`
	// Seen holds the remembered record ids, 16 bytes each (id hash, packed
	// content hash and cycle; little-endian), sorted by id hash: a compact
	// blob, as there are many per card.
	Seen []byte `json:"seen,omitempty"`
}

const snapshotVersion = 4

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// MarshalSnapshot encodes the whole state.
func (p *Partition) MarshalSnapshot() ([]byte, error) {
	s := snapshot{Version: snapshotVersion, Now: p.now}
	for _, pl := range p.plans {
		s.Plans = append(s.Plans, pl.PlanChanged)
	}
	sort.Slice(s.Plans, func(i, j int) bool { return s.Plans[i].PlanID < s.Plans[j].PlanID })
	for _, a := range p.accOrder {
		s.Accounts = append(s.Accounts, accountSnapshot{
			AccountChanged: AccountChanged{AccountID: a.id, CreditLimitFen: a.creditLimit, LowBalanceFen: a.lowBalance, AutoResumeOnPayment: a.autoResume},
			Balance:        a.balance, InArrears: a.inArrears, LowWarned: a.lowWarned,
			Payments: sortedKeys(a.payments), Charges: sortedKeys(a.charges),
		})
	}
	for _, po := range p.poolOrd {
		s.Pools = append(s.Pools, poolSnapshot{PoolChanged: po.PoolChanged, Cycle: [2]int64{po.cycle.Start, po.cycle.End}, Usage: po.usage, Exhausted: po.exhausted})
	}
	s.Cards = make([]cardSnapshot, 0, len(p.order))
	for _, c := range p.order {
		cs := cardSnapshot{
			ICCID: c.iccid, Account: c.account, Plan: c.planID, Carrier: c.carrier,
			IMSI: c.imsi, MSISDN: c.msisdn, Pool: c.poolID, AutoStop: c.autoStop,
			ValidFrom: c.validFrom, ValidUntil: c.validUntil, ExpiredAt: c.expiredAt, Cancelled: c.cancelled,
			Cycle: [2]int64{c.cycle.Start, c.cycle.End}, Usage: c.usage, Overshoot: c.overshoot, Charged: c.charged,
			Reasons: c.reasons, Warned: c.warned, LastCmd: c.lastCmd,
		}
		for _, cl := range c.closed {
			cs.Closed = append(cs.Closed, [3]uint64{uint64(cl.start), cl.usage, cl.charged})
		}
		cs.Seen = encodeSeen(&c.seen)
		s.Cards = append(s.Cards, cs)
	}
	return json.Marshal(&s)
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
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding snapshot: %w", err)
	}
	if s.Version != snapshotVersion {
		return nil, fmt.Errorf("snapshot version %d, this build reads %d", s.Version, snapshotVersion)
	}
	p := NewPartition()
	p.now = s.Now
	for _, pc := range s.Plans {
		in := Input{Type: TypePlanChanged, Plan: &pc}
		if out := p.applyPlan(&in, nil); len(out) > 0 {
			return nil, fmt.Errorf("snapshot plan %q: %s", pc.PlanID, out[0].Detail)
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
			return nil, fmt.Errorf("snapshot pool %q: %w", ps.PoolID, err)
		}
		po := &pool{PoolChanged: ps.PoolChanged, account: ps.AccountID, loc: loc, anchor: max(ps.CycleAnchorDay, 1),
			cycle: Cycle{ps.Cycle[0], ps.Cycle[1]}, usage: ps.Usage, exhausted: ps.Exhausted}
		p.pools[po.PoolID] = po
		p.poolOrd = append(p.poolOrd, po)
	}
	for _, cs := range s.Cards {
		if _, ok := p.plans[cs.Plan]; !ok {
			return nil, fmt.Errorf("snapshot card %s: unknown plan %q", cs.ICCID, cs.Plan)
		}
		c := &Card{
			iccid: cs.ICCID, account: p.account(cs.Account).id, planID: p.plans[cs.Plan].PlanID, carrier: p.intern(cs.Carrier),
			imsi: cs.IMSI, msisdn: cs.MSISDN, poolID: p.intern(cs.Pool), autoStop: cs.AutoStop,
			validFrom: cs.ValidFrom, validUntil: cs.ValidUntil, expiredAt: cs.ExpiredAt, cancelled: cs.Cancelled,
			cycle: Cycle{cs.Cycle[0], cs.Cycle[1]}, usage: cs.Usage, overshoot: cs.Overshoot, charged: cs.Charged,
			reasons: cs.Reasons, warned: cs.Warned, lastCmd: cs.LastCmd,
		}
		for i, cl := range cs.Closed {
			if i < RetainedCycles {
				c.closed[i] = closedCycle{start: int64(cl[0]), usage: cl[1], charged: cl[2]}
			}
		}
		if err := decodeSeen(cs.Seen, &c.seen); err != nil {
			return nil, fmt.Errorf("snapshot card %s: %w", cs.ICCID, err)
		}
		p.addCard(c)
	}
	return p, nil
}

// encodeSeen writes the id set as (key, value) pairs in key order, so that
// a state has one encoding whatever the table's history.
func encodeSeen(seen *idSet) []byte {
	if seen.len() == 0 {
		return nil
	}
	pairs := make([][2]uint64, 0, seen.len())
	seen.each(func(k uint64, v seenRecord) { pairs = append(pairs, [2]uint64{k, uint64(v)}) })
	sort.Slice(pairs, func(i, j int) bool { return pairs[i][0] < pairs[j][0] })
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
