package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/card"
	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// CardEntry is what ingest knows of a card: enough to route its records.
type CardEntry struct {
	ICCID     string `json:"iccid"`
	AccountID string `json:"account_id"`
	PlanID    string `json:"plan_id"`
	Carrier   string `json:"carrier"`
	IMSI      string `json:"imsi,omitempty"`
	MSISDN    string `json:"msisdn,omitempty"`
}

// Directory maps cards to accounts (and so to partitions), IMSI and MSISDN
// to ICCIDs, and holds the plans, for routing and validation at ingest. It
// is a cache of a JetStream KV bucket, kept current by a watch, so several
// ingest instances share it. Safe for concurrent use.
type Directory struct {
	kv  jetstream.KeyValue
	log *zap.Logger

	mu       sync.RWMutex
	cards    map[string]*CardEntry // an entry is never changed: a newer one replaces it
	routes   map[uint64]route      // by packed ICCID (every valid one): what routing a record needs
	byIMSI   map[string]string
	byMSISDN map[string]string
	plans    map[string]card.PlanChanged
}

// NewDirectory loads the bucket and starts watching it until ctx ends.
func NewDirectory(ctx context.Context, kv jetstream.KeyValue, log *zap.Logger) (*Directory, error) {
	d := &Directory{kv: kv, log: log}
	d.init()
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("directory: watching: %w", err)
	}
	// the watch sends every current value, then nil
	for e := range w.Updates() {
		if e == nil {
			break
		}
		d.apply(e)
	}
	go func() {
		defer w.Stop() //nolint:errcheck // shutting down
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					d.apply(e)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return d, nil
}

// route is what ingest needs of a card to route its records, held in the
// map slot itself: finding it reads no other memory.
type route struct {
	accountHash uint32 // broker.AccountHash of its account
	carrier     string // the card's carrier: only its records count on it
}

func (d *Directory) init() {
	d.routes = map[uint64]route{}
	d.cards, d.byIMSI, d.byMSISDN, d.plans = map[string]*CardEntry{}, map[string]string{}, map[string]string{}, map[string]card.PlanChanged{}
}

func (d *Directory) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	kind, _, _ := strings.Cut(e.Key(), ".")
	d.mu.Lock()
	defer d.mu.Unlock()
	switch kind {
	case "card":
		var c CardEntry
		if err := json.Unmarshal(e.Value(), &c); err != nil {
			d.log.Warn("directory: bad card entry", zap.String("key", e.Key()), zap.Error(err))
			return
		}
		d.putCardLocked(c)
	case "plan":
		var p card.PlanChanged
		if err := json.Unmarshal(e.Value(), &p); err != nil {
			d.log.Warn("directory: bad plan entry", zap.String("key", e.Key()), zap.Error(err))
			return
		}
		d.plans[p.PlanID] = p
	}
}

func (d *Directory) putCardLocked(c CardEntry) {
	d.cards[c.ICCID] = &c
	if n, ok := cdr.PackICCID(c.ICCID); ok {
		d.routes[n] = route{accountHash: broker.AccountHash(c.AccountID), carrier: d.cards[c.ICCID].Carrier}
	}
	if c.IMSI != "" {
		d.byIMSI[c.IMSI] = c.ICCID
	}
	if c.MSISDN != "" {
		d.byMSISDN[c.MSISDN] = c.ICCID
	}
}

// Card returns a card's entry.
func (d *Directory) Card(iccid string) (CardEntry, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if c, ok := d.cards[iccid]; ok {
		return *c, true
	}
	return CardEntry{}, false
}

// Resolve finds a card by ICCID, else IMSI, else MSISDN. The entry it
// returns is shared: read it, never change it.
func (d *Directory) Resolve(iccid, imsi, msisdn string) (*CardEntry, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if iccid == "" && imsi != "" {
		iccid = d.byIMSI[imsi]
	}
	if iccid == "" && msisdn != "" {
		iccid = d.byMSISDN[msisdn]
	}
	c, ok := d.cards[iccid]
	return c, ok
}

// Route finds a card as Resolve does and returns its ICCID, the hash of
// its account (broker.AccountHash), for routing a record to its partition,
// and its carrier.
func (d *Directory) Route(iccid, imsi, msisdn string) (string, uint32, string, bool) {
	if n, ok := cdr.PackICCID(iccid); ok {
		d.mu.RLock()
		r, found := d.routes[n]
		d.mu.RUnlock()
		return iccid, r.accountHash, r.carrier, found
	}
	c, found := d.Resolve(iccid, imsi, msisdn)
	if !found {
		return "", 0, "", false
	}
	return c.ICCID, broker.AccountHash(c.AccountID), c.Carrier, true
}

// Plan returns a plan.
func (d *Directory) Plan(id string) (card.PlanChanged, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	p, ok := d.plans[id]
	return p, ok
}

// PutCard stores a card's entry in the bucket and in this cache.
func (d *Directory) PutCard(ctx context.Context, c CardEntry) error {
	b, _ := json.Marshal(c)
	if _, err := d.kv.Put(ctx, "card."+c.ICCID, b); err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	d.mu.Lock()
	d.putCardLocked(c)
	d.mu.Unlock()
	return nil
}

// PutPlan stores a plan in the bucket and in this cache.
func (d *Directory) PutPlan(ctx context.Context, p card.PlanChanged) error {
	b, _ := json.Marshal(p)
	if _, err := d.kv.Put(ctx, "plan."+p.PlanID, b); err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	d.mu.Lock()
	d.plans[p.PlanID] = p
	d.mu.Unlock()
	return nil
}
