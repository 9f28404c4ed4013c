package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/event"
)

// The checks compare what the system holds with the ledger once it has
// caught up. Each adds its findings to the report; a finding is a failure.

// crossing reports whether card i's acknowledged usage went over its
// plan's quota and the card opted in to the automatic stop: such a card
// must have exactly one over-quota stop (the manual clock never rolls the
// cycle, so it is never cleared and raised again).
func (c *campaign) crossing(i int, perCard []sums) bool {
	s := perCard[i]
	return c.fleet.cards[i].AutoStop && s.up+s.down > c.fleet.quotas[c.fleet.cards[i].Plan]
}

// checkCards reads every card over the API: its cycle usage must equal the
// ledger's sum, and a crossing card must be stopped for over_quota (any
// other card in service).
func (c *campaign) checkCards(ctx context.Context, perCard []sums) {
	for i, spec := range c.fleet.cards {
		var resp struct {
			Status      string   `json:"status"`
			StopReasons []string `json:"stop_reasons"`
			Cycle       struct {
				UsageBytes uint64 `json:"usage_bytes"`
			} `json:"cycle"`
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		ans, err := c.api.do(rctx, http.MethodGet, "/v1/cards/"+spec.ICCID, "", "", nil)
		cancel()
		if err == nil {
			err = json.Unmarshal(ans.body, &resp)
		}
		if err != nil {
			c.rep.fail("card %s: reading it: %v", spec.ICCID, err)
			continue
		}
		want := perCard[i].up + perCard[i].down
		got := resp.Cycle.UsageBytes
		switch {
		case got < want:
			c.rep.CardsShort++
			c.rep.BytesLost += want - got
			c.rep.fail("card %s: usage_bytes %d, ledger %d: %d bytes lost", spec.ICCID, got, want, want-got)
		case got > want:
			c.rep.CardsOver++
			c.rep.BytesDoubled += got - want
			c.rep.fail("card %s: usage_bytes %d, ledger %d: %d bytes counted twice", spec.ICCID, got, want, got-want)
		}
		stopped := resp.Status == "stopped" && len(resp.StopReasons) == 1 && resp.StopReasons[0] == "over_quota"
		if cross := c.crossing(i, perCard); cross && !stopped {
			c.rep.fail("card %s crossed its quota but reads %s %v", spec.ICCID, resp.Status, resp.StopReasons)
		} else if !cross && resp.Status != "in_service" {
			c.rep.fail("card %s did not cross its quota (or has no auto stop) but reads %s %v", spec.ICCID, resp.Status, resp.StopReasons)
		}
	}
}

// tally is a grouped sum read from ClickHouse or made from the ledger.
type tally map[string]sums

// chQuery reads rows of (key, up, down, records) into a tally.
func chQuery(ctx context.Context, conn driver.Conn, q string) (tally, error) {
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	out := tally{}
	for rows.Next() {
		var k string
		var s sums
		if err := rows.Scan(&k, &s.up, &s.down, &s.records); err != nil {
			return nil, err
		}
		out[k] = s
	}
	return out, rows.Err()
}

// compare reports the keys whose sums differ, at most five of them.
func compare(name string, got, want tally) []string {
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		if got[k] != want[k] {
			g, w := got[k], want[k]
			diffs = append(diffs, fmt.Sprintf("%s[%s]: up/down/records %d/%d/%d, ledger %d/%d/%d",
				name, k, g.up, g.down, g.records, w.up, w.down, w.records))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// expected groups the ledger as a rollup does.
func (c *campaign) expected(key func(card cardSpec, day int64) string) tally {
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	out := tally{}
	for k, v := range c.ledger.by {
		kk := key(c.fleet.cards[k.card], k.day)
		s := out[kk]
		s.add(*v)
		out[kk] = s
	}
	return out
}

func dayString(day int64) string { return time.Unix(day*86400, 0).UTC().Format("2006-01-02") }

// checkClickHouse compares usage_records and every rollup with the ledger.
// It first waits (bounded) for usage_records to hold the ledger's count:
// /readyz's sink backlog can read 0 a moment before the last insert lands.
func (c *campaign) checkClickHouse(ctx context.Context) {
	conn, err := c.ch.open(c.cfg.Database)
	if err != nil {
		c.rep.fail("clickhouse: %v", err)
		return
	}
	defer conn.Close()
	want := c.ledger.total
	var rows, distinct, up, down uint64
	read := func() error {
		return conn.QueryRow(ctx, `SELECT count(), uniqExact(carrier, record_id), sum(bytes_up), sum(bytes_down) FROM usage_records`).
			Scan(&rows, &distinct, &up, &down)
	}
	deadline := time.Now().Add(c.cfg.CatchUpTimeout)
	var last uint64
	stableSince := time.Now()
	for {
		if err := read(); err != nil {
			c.rep.fail("clickhouse: %v", err)
			return
		}
		if rows != last {
			last, stableSince = rows, time.Now()
		}
		if rows >= want.records || time.Since(stableSince) > 10*time.Second || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.rep.CHRows, c.rep.CHDistinct = rows, distinct
	if distinct < want.records {
		c.rep.RecordsLost = want.records - distinct
	}
	c.rep.RecordsDoubled = rows - distinct
	if distinct > want.records {
		c.rep.RecordsDoubled += distinct - want.records // counted but never acknowledged
	}
	if rows != want.records || distinct != want.records || up != want.up || down != want.down {
		c.rep.fail("clickhouse usage_records: %d rows, %d distinct ids, bytes up/down %d/%d; ledger %d records, %d/%d",
			rows, distinct, up, down, want.records, want.up, want.down)
	}

	checks := []struct {
		name string
		q    string
		key  func(cardSpec, int64) string
	}{
		{"usage_records by day and card",
			`SELECT concat(toString(toDate(start_time, 'Asia/Shanghai')), '/', iccid), sum(bytes_up), sum(bytes_down), count() FROM usage_records GROUP BY toDate(start_time, 'Asia/Shanghai'), iccid`,
			func(cs cardSpec, d int64) string { return dayString(d) + "/" + cs.ICCID }},
		{"usage_daily_card",
			`SELECT concat(toString(day), '/', iccid, '/', account_id, '/', plan_id), sum(bytes_up), sum(bytes_down), sum(records) FROM usage_daily_card GROUP BY day, iccid, account_id, plan_id`,
			func(cs cardSpec, d int64) string {
				return dayString(d) + "/" + cs.ICCID + "/" + cs.Account + "/" + cs.Plan
			}},
		{"usage_daily_account",
			`SELECT concat(toString(day), '/', account_id), sum(bytes_up), sum(bytes_down), sum(records) FROM usage_daily_account GROUP BY day, account_id`,
			func(cs cardSpec, d int64) string { return dayString(d) + "/" + cs.Account }},
		{"usage_daily_plan",
			`SELECT concat(toString(day), '/', plan_id), sum(bytes_up), sum(bytes_down), sum(records) FROM usage_daily_plan GROUP BY day, plan_id`,
			func(cs cardSpec, d int64) string { return dayString(d) + "/" + cs.Plan }},
		{"usage_daily_carrier",
			`SELECT concat(toString(day), '/', carrier), sum(bytes_up), sum(bytes_down), sum(records) FROM usage_daily_carrier GROUP BY day, carrier`,
			func(cs cardSpec, d int64) string { return dayString(d) + "/" + cs.Carrier }},
		// usage_cycle_card has bytes (up + down) only: compared as up, with down 0.
		{"usage_cycle_card",
			`SELECT concat(toString(toUnixTimestamp(cycle_start)), '/', iccid), sum(bytes), toUInt64(0), sum(records) FROM usage_cycle_card GROUP BY cycle_start, iccid`,
			func(cs cardSpec, _ int64) string { return c.cycleStart + "/" + cs.ICCID }},
	}
	for _, ck := range checks {
		got, err := chQuery(ctx, conn, ck.q)
		if err != nil {
			c.rep.fail("clickhouse %s: %v", ck.name, err)
			continue
		}
		want := c.expected(ck.key)
		if ck.name == "usage_cycle_card" {
			for k, v := range want {
				want[k] = sums{up: v.up + v.down, records: v.records}
			}
		}
		diffs := compare(ck.name, got, want)
		c.rep.CHMismatches += len(diffs)
		for i, d := range diffs {
			if i == 5 {
				c.rep.fail("clickhouse %s: %d more keys differ", ck.name, len(diffs)-5)
				break
			}
			c.rep.fail("clickhouse %s", d)
		}
	}
	c.checkCHStops(ctx, conn)
}

// checkCHStops: card_events holds one over-quota stop per crossing card.
func (c *campaign) checkCHStops(ctx context.Context, conn driver.Conn) {
	rows, err := conn.Query(ctx, `SELECT iccid, count(), uniqExact(event_id) FROM card_events
		WHERE type = 'cardmeter.card.stopped.v1' AND reason = 'over_quota' GROUP BY iccid`)
	if err != nil {
		c.rep.fail("clickhouse card_events: %v", err)
		return
	}
	defer rows.Close()
	got := map[string][2]uint64{}
	for rows.Next() {
		var iccid string
		var n, ids uint64
		if err := rows.Scan(&iccid, &n, &ids); err != nil {
			c.rep.fail("clickhouse card_events: %v", err)
			return
		}
		got[iccid] = [2]uint64{n, ids}
	}
	perCard := c.ledger.perCard(len(c.fleet.cards))
	for i, cs := range c.fleet.cards {
		want := uint64(0)
		if c.crossing(i, perCard) {
			want = 1
		}
		if g := got[cs.ICCID]; g[0] != want {
			c.rep.CHMismatches++
			c.rep.fail("clickhouse card_events: card %s has %d over-quota stops (%d distinct ids), want %d", cs.ICCID, g[0], g[1], want)
		}
	}
}

// checkEvents reads every card.stopped event in the EVENTS stream: each
// crossing card has exactly one with reason over_quota, no other card any.
func (c *campaign) checkEvents(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	nc, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(c.natsPort), nats.Name("chaos-check"), nats.UserInfo(broker.UserAdmin, c.natsAdmin))
	if err != nil {
		c.rep.fail("events: connecting to NATS: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.rep.fail("events: %v", err)
		return
	}
	filter := broker.EventSubject("card.stopped", ">")
	st, err := js.Stream(ctx, broker.StreamEvents)
	if err != nil {
		c.rep.fail("events: %v", err)
		return
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		c.rep.fail("events: %v", err)
		return
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		c.rep.fail("events: %v", err)
		return
	}
	perCard := map[string]int{}
	ids := map[string]int{}
	var read uint64
	for read < total && ctx.Err() == nil {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			c.rep.fail("events: fetching: %v", err)
			return
		}
		for m := range batch.Messages() {
			read++
			var e event.Envelope
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				c.rep.fail("events: %s: %v", m.Subject(), err)
				continue
			}
			ids[e.ID]++
			if e.Data.Reason == "over_quota" {
				perCard[e.Subject]++
			}
		}
	}
	if read < total {
		c.rep.fail("events: read %d of %d stopped events before the deadline", read, total)
	}
	for id, n := range ids {
		if n > 1 {
			c.rep.fail("events: event id %s published %d times", id, n)
		}
	}
	ledger := c.ledger.perCard(len(c.fleet.cards))
	for i, cs := range c.fleet.cards {
		want := 0
		if c.crossing(i, ledger) {
			want = 1
			c.rep.CrossingCards++
		}
		got := perCard[cs.ICCID]
		c.rep.StoppedEvents += got
		if got != want {
			c.rep.EventMismatches++
			c.rep.fail("events: card %s has %d over-quota stopped events, want %d", cs.ICCID, got, want)
		}
	}
}
