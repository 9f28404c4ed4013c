package chaos

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/cardmeter/cardmeter/pkg/cdr"
)

// Plans of the campaign. Small is crossed early by every card on it; edge
// is sized so that only the cards written most cross it; bulk is never
// crossed. Cards with and without the automatic over-quota stop are on
// each, so a card over quota without the option shows that it is not
// stopped.
const (
	planSmall = "chaos-small"
	planEdge  = "chaos-edge"
	planBulk  = "chaos-bulk"
)

// avgRecordBytes is the mean of bytes_up + bytes_down of a generated record.
const avgRecordBytes = (100 + 2500) + (1000 + 25000)

// cardSpec is one provisioned card.
type cardSpec struct {
	ICCID    string
	Account  string
	Plan     string
	Carrier  string
	AutoStop bool
	Weight   uint64 // how often the writers pick it, relative to the others
}

// fleet is the campaign's cards and plans.
type fleet struct {
	cards  []cardSpec
	quotas map[string]uint64 // plan -> quota bytes
}

// newFleet lays out n cards over accounts, plans and carriers (one carrier
// per writer). expectedBytes is what the whole campaign should write at
// its target rate; the plans' quotas are fractions of a card's share of it.
func newFleet(n, accounts, writers int, expectedBytes uint64) *fleet {
	f := &fleet{quotas: map[string]uint64{}}
	var total uint64
	for i := 0; i < n; i++ {
		base := fmt.Sprintf("8986%02d%013d", 77, i) // 19 digits, then the Luhn digit
		c := cardSpec{
			ICCID:    base + string(cdr.LuhnDigit(base)),
			Account:  "chaos-a" + strconv.Itoa(i%accounts),
			Carrier:  carrierOf(i % writers),
			AutoStop: i%2 == 0,
			Weight:   uint64(1 + i%4),
		}
		switch (i / 2) % 5 {
		case 0:
			c.Plan = planSmall
		case 1, 2:
			c.Plan = planEdge
		default:
			c.Plan = planBulk
		}
		total += c.Weight
		f.cards = append(f.cards, c)
	}
	// a card of weight 1 gets expectedBytes/total at the target rate
	unit := expectedBytes / max(total, 1)
	f.quotas[planSmall] = max(unit/5, 1<<20)
	f.quotas[planEdge] = max(unit*2, 1<<20)
	f.quotas[planBulk] = 1 << 50
	return f
}

func carrierOf(writer int) string { return "chaos-c" + strconv.Itoa(writer) }

// provision creates the plans, accounts and cards over the API. Each call
// is retried until answered 2xx: provisioning is idempotent.
func (f *fleet) provision(ctx context.Context, api *apiClient) error {
	for _, p := range []string{planSmall, planEdge, planBulk} {
		body := fmt.Sprintf(`{"quota_bytes": %d}`, f.quotas[p])
		if err := api.put(ctx, "/v1/plans/"+p, body); err != nil {
			return fmt.Errorf("plan %s: %w", p, err)
		}
	}
	seen := map[string]bool{}
	for _, c := range f.cards {
		if !seen[c.Account] {
			seen[c.Account] = true
			if err := api.put(ctx, "/v1/accounts/"+c.Account, `{}`); err != nil {
				return fmt.Errorf("account %s: %w", c.Account, err)
			}
		}
		body := fmt.Sprintf(`{"account_id": %q, "plan_id": %q, "carrier": %q, "auto_stop_over_quota": %t}`,
			c.Account, c.Plan, c.Carrier, c.AutoStop)
		if err := api.put(ctx, "/v1/cards/"+c.ICCID, body); err != nil {
			return fmt.Errorf("card %s: %w", c.ICCID, err)
		}
	}
	return nil
}

// put sends a JSON PUT and retries until a 2xx; a 4xx is final.
func (a *apiClient) put(ctx context.Context, path, body string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err := a.do(ctx, http.MethodPut, path, "application/json", "", []byte(body))
	return err
}
