package card

import (
	"slices"
	"strings"
)

// account is an enterprise's balance and options (DOMAIN.md "Plans and
// accounts", §3 欠费停机).
type account struct {
	id          string
	balance     int64 // fen: payments minus charges
	creditLimit int64 // fen ≥ 0: the balance may go down to -creditLimit
	lowBalance  int64 // fen: warn below this; 0 disables the warning
	autoResume  bool  // resume arrears stops on payment
	inArrears   bool
	lowWarned   bool
	cards       []*Card
	sorted      []*Card // cards for lists: the first sortedN in ICCID order
	sortedN     int
	payments    map[string]bool // payment ids applied: each counts once
	charges     map[string]bool // billing charge ids applied
	dirty       bool            // changed since the last checkpoint
}

// KeepNumberFeeFen is the monthly keep-number fee (停机保号费) of an
// expired card: 5 CNY.
const KeepNumberFeeFen = 500

// account returns the account, creating it with defaults on first use.
func (p *Partition) account(id string) *account {
	a := p.accounts[id]
	if a == nil {
		a = &account{id: id, payments: map[string]bool{}, charges: map[string]bool{}, dirty: true}
		p.accounts[id] = a
		p.accOrder = append(p.accOrder, a)
	}
	return a
}

func (a *account) emit(t EmittedType, at int64, cause string) Emitted {
	return Emitted{Type: t, AccountID: a.id, At: at, Cause: cause, Balance: a.balance}
}

func (p *Partition) applyAccount(in *Input, out []Emitted) []Emitted {
	ac := in.Account
	if ac.CreditLimitFen < 0 || ac.LowBalanceFen < 0 {
		return append(out, refused(in, "", RefusedInvalid, "account "+ac.AccountID+": credit_limit_fen and low_balance_fen must be ≥ 0"))
	}
	a := p.account(ac.AccountID)
	a.creditLimit, a.lowBalance, a.autoResume = ac.CreditLimitFen, ac.LowBalanceFen, ac.AutoResumeOnPayment
	a.dirty = true
	return p.settle(a, p.at(in), "event:"+in.ID, out)
}

// applyPayment credits the account once per payment id.
func (p *Partition) applyPayment(in *Input, out []Emitted) []Emitted {
	pm := in.Payment
	if pm.AmountFen <= 0 {
		return append(out, refused(in, "", RefusedInvalid, "payment "+pm.PaymentID+": amount_fen must be > 0"))
	}
	a := p.account(pm.AccountID)
	if a.payments[pm.PaymentID] {
		return out
	}
	a.payments[pm.PaymentID] = true
	a.balance += pm.AmountFen
	a.dirty = true
	e := a.emit(EmitPaymentReceived, p.at(in), "event:"+in.ID)
	e.Amount, e.Detail = pm.AmountFen, pm.PaymentID
	out = append(out, e)
	return p.settle(a, p.at(in), "event:"+in.ID, out)
}

// applyCharge debits the account once per charge id.
func (p *Partition) applyCharge(in *Input, out []Emitted) []Emitted {
	ch := in.Charge
	if ch.AmountFen <= 0 {
		return append(out, refused(in, "", RefusedInvalid, "charge "+ch.ChargeID+": amount_fen must be > 0"))
	}
	a := p.account(ch.AccountID)
	if a.charges[ch.ChargeID] {
		return out
	}
	a.charges[ch.ChargeID] = true
	a.dirty = true
	reason := ch.Reason
	if reason == "" {
		reason = "billing"
	}
	return p.charge(a, nil, ch.AmountFen, reason, p.at(in), "event:"+in.ID, out)
}

// charge takes amount from the account (for card c, when it is the card's)
// and applies the arrears rule.
func (p *Partition) charge(a *account, c *Card, amount int64, reason string, at int64, cause string, out []Emitted) []Emitted {
	a.balance -= amount
	a.dirty = true
	e := a.emit(EmitCharged, at, cause)
	e.Amount, e.Detail = amount, reason
	if c != nil {
		e.ICCID, e.PlanID = c.iccid, c.planID
	}
	out = append(out, e)
	return p.settle(a, at, cause, out)
}

// settle applies the balance rules after a change (DOMAIN.md §3): below
// the credit limit every card of the account stops for arrears; back at
// zero or above, the account leaves arrears and its cards become resumable
// by hand, or resume if the account opted in. The low-balance warning
// fires and resolves here too.
func (p *Partition) settle(a *account, at int64, cause string, out []Emitted) []Emitted {
	switch {
	case !a.inArrears && a.balance < -a.creditLimit:
		a.inArrears, a.dirty = true, true
		out = append(out, a.emit(EmitArrearsEntered, at, cause))
		for _, c := range a.cards {
			if !c.cancelled {
				out = c.raise(ReasonArrears, at, cause, p.plans[c.planID], out)
			}
		}
	case a.inArrears && a.balance >= 0:
		a.inArrears, a.dirty = false, true
		out = append(out, a.emit(EmitArrearsCleared, at, cause))
		if a.autoResume {
			for _, c := range a.cards {
				if !c.cancelled {
					out = c.clear(ReasonArrears, at, cause, p.plans[c.planID], out)
				}
			}
		}
	}
	low := a.lowBalance > 0 && a.balance < a.lowBalance
	switch {
	case low && !a.lowWarned:
		a.lowWarned, a.dirty = true, true
		e := a.emit(EmitAccountWarning, at, cause)
		e.Warning, e.Amount = WarnLowBalance, a.lowBalance
		out = append(out, e)
	case !low && a.lowWarned:
		a.lowWarned, a.dirty = false, true
		e := a.emit(EmitAccountWarningResolved, at, cause)
		e.Warning, e.Amount = WarnLowBalance, a.lowBalance
		out = append(out, e)
	}
	return out
}

// AccountView is a read-only copy of an account's state.
type AccountView struct {
	AccountID           string
	BalanceFen          int64
	CreditLimitFen      int64
	LowBalanceFen       int64
	AutoResumeOnPayment bool
	InArrears           bool
	LowBalanceWarned    bool
	CardsByStatus       map[Status]int
}

// AccountPools are the account's pools, by id, each with its cards
// counted in one pass over the account's cards.
func (p *Partition) AccountPools(id string) []PoolView {
	a, ok := p.accounts[id]
	if !ok {
		return nil
	}
	var out []PoolView
	at := map[string]int{}
	for _, po := range p.poolOrd {
		if po.account == a.id {
			at[po.PoolID] = len(out)
			v := p.poolView(po, false)
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil
	}
	for _, c := range a.cards {
		if i, ok := at[c.poolID]; ok && c.poolID != "" && !c.cancelled {
			out[i].Cards++
		}
	}
	slices.SortFunc(out, func(a, b PoolView) int { return strings.Compare(a.PoolID, b.PoolID) })
	return out
}

// Account returns a view of an account, or false when it is unknown.
func (p *Partition) Account(id string) (AccountView, bool) {
	a, ok := p.accounts[id]
	if !ok {
		return AccountView{}, false
	}
	v := AccountView{AccountID: a.id, BalanceFen: a.balance, CreditLimitFen: a.creditLimit, LowBalanceFen: a.lowBalance,
		AutoResumeOnPayment: a.autoResume, InArrears: a.inArrears, LowBalanceWarned: a.lowWarned, CardsByStatus: map[Status]int{}}
	for _, c := range a.cards {
		v.CardsByStatus[c.status()]++
	}
	return v, true
}

// sortedCards are the account's cards in ICCID order.
func (a *account) sortedCards() []*Card {
	if len(a.sorted) < len(a.cards) {
		a.sorted = append(a.sorted, a.cards[len(a.sorted):]...) // cards are only ever added
	}
	a.sorted, a.sortedN = mergeSorted(a.sorted, a.sortedN)
	return a.sorted
}
