package card

import (
	"encoding/json"
	"fmt"
	"sort"
)

// snapshot is the serialized form of a Partition. Its JSON is stable: maps
// are written as sorted lists, so equal states give equal bytes.
type snapshot struct {
	Version int            `json:"version"`
	Now     int64          `json:"now"`
	Plans   []PlanChanged  `json:"plans"`
	Cards   []cardSnapshot `json:"cards"`
}

type cardSnapshot struct {
	ICCID      string      `json:"iccid"`
	Account    string      `json:"account"`
	Plan       string      `json:"plan"`
	Carrier    string      `json:"carrier"`
	IMSI       string      `json:"imsi,omitempty"`
	MSISDN     string      `json:"msisdn,omitempty"`
	Pool       string      `json:"pool,omitempty"`
	AutoStop   bool        `json:"auto_stop,omitempty"`
	ValidFrom  int64       `json:"valid_from,omitempty"`
	ValidUntil int64       `json:"valid_until,omitempty"`
	Cycle      [2]int64    `json:"cycle"`
	Usage      uint64      `json:"usage"`
	Overshoot  uint64      `json:"overshoot,omitempty"`
	Reasons    Reasons     `json:"reasons,omitempty"`
	Seen       [][3]uint64 `json:"seen,omitempty"` // id hash, content hash, cycle start
}

const snapshotVersion = 1

// MarshalSnapshot encodes the whole state.
func (p *Partition) MarshalSnapshot() ([]byte, error) {
	s := snapshot{Version: snapshotVersion, Now: p.now}
	for _, pl := range p.plans {
		s.Plans = append(s.Plans, pl.PlanChanged)
	}
	sort.Slice(s.Plans, func(i, j int) bool { return s.Plans[i].PlanID < s.Plans[j].PlanID })
	s.Cards = make([]cardSnapshot, 0, len(p.order))
	for _, c := range p.order {
		cs := cardSnapshot{
			ICCID: c.iccid, Account: c.account, Plan: c.planID, Carrier: c.carrier,
			IMSI: c.imsi, MSISDN: c.msisdn, Pool: c.pool, AutoStop: c.autoStop,
			ValidFrom: c.validFrom, ValidUntil: c.validUntil, Cycle: [2]int64{c.cycle.Start, c.cycle.End},
			Usage: c.usage, Overshoot: c.overshoot, Reasons: c.reasons,
		}
		cs.Seen = make([][3]uint64, 0, len(c.seen))
		for k, v := range c.seen {
			cs.Seen = append(cs.Seen, [3]uint64{k, v.content, uint64(v.cycleStart)})
		}
		sort.Slice(cs.Seen, func(i, j int) bool { return cs.Seen[i][0] < cs.Seen[j][0] })
		s.Cards = append(s.Cards, cs)
	}
	return json.Marshal(&s)
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
	for _, cs := range s.Cards {
		if _, ok := p.plans[cs.Plan]; !ok {
			return nil, fmt.Errorf("snapshot card %s: unknown plan %q", cs.ICCID, cs.Plan)
		}
		c := &Card{
			iccid: cs.ICCID, account: cs.Account, planID: cs.Plan, carrier: cs.Carrier,
			imsi: cs.IMSI, msisdn: cs.MSISDN, pool: cs.Pool, autoStop: cs.AutoStop,
			validFrom: cs.ValidFrom, validUntil: cs.ValidUntil, cycle: Cycle{cs.Cycle[0], cs.Cycle[1]},
			usage: cs.Usage, overshoot: cs.Overshoot, reasons: cs.Reasons,
			seen: make(map[uint64]seenRecord, len(cs.Seen)),
		}
		for _, e := range cs.Seen {
			c.seen[e[0]] = seenRecord{content: e[1], cycleStart: int64(e[2])}
		}
		p.cards[c.iccid] = c
		p.order = append(p.order, c)
	}
	return p, nil
}
