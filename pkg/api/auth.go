package api

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
)

// Scopes (API.md "Auth").
const (
	ScopeBilling  = "billing"
	ScopeOperator = "operator"
	ScopeRead     = "read"
	ScopeAdmin    = "admin"  // every scope
	scopeUsage    = "usage:" // usage:<carrier>
	scopeAny      = "any"    // any known token
	// read:account:<id> and operator:account:<id> are read and operator
	// for one account's cards, pools, events and rejections only: an
	// enterprise customer's own token.
	accountScope = ":account:"
)

// Principal is who a token speaks for.
type Principal struct {
	Name   string
	Scopes []string
}

// Has reports whether the principal holds scope (admin holds every scope).
func (p *Principal) Has(scope string) bool {
	for _, s := range p.Scopes {
		if s == scope || s == ScopeAdmin {
			return true
		}
	}
	return false
}

// May reports whether the principal may use scope (read or operator) on
// an account's things: with the scope itself, or with scope:account:<id>.
// A nil principal (the open API) may do anything.
func (p *Principal) May(scope, account string) bool {
	if p == nil || p.Has(scope) {
		return true
	}
	want := scope + accountScope + account
	for _, s := range p.Scopes {
		if s == want {
			return true
		}
	}
	return false
}

// Accounts lists the accounts the principal may use scope on, and
// whether it is limited to them (false: it may on every account).
func (p *Principal) Accounts(scope string) (accounts []string, limited bool) {
	if p == nil || p.Has(scope) || (scope != ScopeRead && scope != ScopeOperator) {
		return nil, false
	}
	for _, s := range p.Scopes {
		if a, ok := strings.CutPrefix(s, scope+accountScope); ok {
			accounts = append(accounts, a)
		}
	}
	return accounts, true
}

// hasAny reports whether the principal holds scope, for all or some accounts.
func (p *Principal) hasAny(scope string) bool {
	if p.Has(scope) {
		return true
	}
	for _, s := range p.Scopes {
		if strings.HasPrefix(s, scope+accountScope) {
			return true
		}
	}
	return false
}

// Carriers lists the carriers the principal may push usage for.
func (p *Principal) Carriers() []string {
	var out []string
	for _, s := range p.Scopes {
		if c, ok := strings.CutPrefix(s, scopeUsage); ok {
			out = append(out, c)
		}
	}
	return out
}

// Tokens holds the bearer tokens. Only their SHA-256 digests are kept, and
// a lookup compares against every entry in constant time, so neither the
// tokens nor their lengths leak through timing. Replace swaps them all at
// once while the API serves: a removed token is refused from then on.
type Tokens struct {
	entries atomic.Pointer[[]tokenEntry]
}

// Replace makes next's tokens the ones in force.
func (t *Tokens) Replace(next *Tokens) { t.entries.Store(next.entries.Load()) }

// Len is how many tokens are in force.
func (t *Tokens) Len() int { return len(*t.entries.Load()) }

type tokenEntry struct {
	digest [32]byte
	p      Principal
}

// ParseTokens reads token lines: "<name> <token> <scope>[,<scope>...]".
// Blank lines and lines starting with # are skipped; ';' also ends a line,
// so the same text fits in one environment variable.
func ParseTokens(text string) (*Tokens, error) {
	var entries []tokenEntry
	text = strings.ReplaceAll(text, ";", "\n")
	sc := bufio.NewScanner(strings.NewReader(text))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("token line %d: want \"<name> <token> <scope>[,<scope>...]\"", n)
		}
		if len(f[1]) < 16 {
			return nil, fmt.Errorf("token line %d (%s): a token needs at least 16 characters", n, f[0])
		}
		var scopes []string
		for _, s := range strings.Split(f[2], ",") {
			switch {
			case s == ScopeBilling, s == ScopeOperator, s == ScopeRead, s == ScopeAdmin:
			case strings.HasPrefix(s, scopeUsage) && idPattern.MatchString(strings.TrimPrefix(s, scopeUsage)):
			case accountScoped(s):
			default:
				// the value is not shown: on a line with its fields out of
				// order it could be the token
				return nil, fmt.Errorf("token line %d (%s): an unknown scope in its third field (usage:<carrier>, billing, operator, read, read:account:<id>, operator:account:<id>, admin)", n, f[0])
			}
			scopes = append(scopes, s)
		}
		entries = append(entries, tokenEntry{digest: sha256.Sum256([]byte(f[1])), p: Principal{Name: f[0], Scopes: scopes}})
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("no tokens")
	}
	t := &Tokens{}
	t.entries.Store(&entries)
	return t, nil
}

func accountScoped(s string) bool {
	for _, scope := range []string{ScopeRead, ScopeOperator} {
		if a, ok := strings.CutPrefix(s, scope+accountScope); ok && idPattern.MatchString(a) {
			return true
		}
	}
	return false
}

// LoadTokens reads tokens from a file.
func LoadTokens(path string) (*Tokens, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := ParseTokens(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Lookup finds the principal of a token.
func (t *Tokens) Lookup(token string) (*Principal, bool) {
	d := sha256.Sum256([]byte(token))
	var found *Principal
	entries := *t.entries.Load()
	for i := range entries {
		if subtle.ConstantTimeCompare(d[:], entries[i].digest[:]) == 1 {
			found = &entries[i].p
		}
	}
	return found, found != nil
}

type principalKey struct{}

// authorize checks the request's bearer token for scope (returning the
// principal, when the token is known, with a refusal too: the audit names
// who was refused) ("" for none; a
// scope ending in ':' is any usage:<carrier>). With no tokens configured
// every request passes, as the open all-in-one on loopback.
func (s *Server) authorize(r *http.Request, scope string) (*Principal, error) {
	if s.cfg.Tokens == nil || scope == "" {
		return nil, nil
	}
	// the scheme is case-insensitive (RFC 9110, section 11.1)
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimLeft(tok, " ")
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil, &authProblem{problem(http.StatusUnauthorized, "auth/missing-token", "authentication required", "send Authorization: Bearer <token>")}
	}
	p, ok := s.cfg.Tokens.Lookup(tok)
	if !ok {
		return nil, &authProblem{problem(http.StatusUnauthorized, "auth/invalid-token", "invalid token", "the token is not known")}
	}
	if scope == scopeAny {
		return p, nil
	}
	if scope == scopeUsage {
		if len(p.Carriers()) == 0 && !p.Has(ScopeAdmin) {
			return p, problem(http.StatusForbidden, "auth/forbidden", "forbidden", "the token has no usage:<carrier> scope")
		}
		return p, nil
	}
	if !p.hasAny(scope) {
		return p, problem(http.StatusForbidden, "auth/forbidden", "forbidden", "the token lacks the "+scope+" scope")
	}
	return p, nil
}

// authProblem is a 401, answered with WWW-Authenticate.
type authProblem struct{ *Problem }

// carrierOf says which carrier a usage request speaks for: the token's
// usage:<carrier> scope; ?carrier= picks one when the token has several
// (and must name one of them). Without tokens, ?carrier= or "default".
func (s *Server) carrierOf(r *http.Request, p *Principal) (string, error) {
	asked := r.URL.Query().Get("carrier")
	if p == nil {
		if asked == "" {
			// no token to take it from: filed under a made-up carrier, the
			// records would count on no card (a card counts its carrier's)
			return "", invalid("carrier", "name the batch's carrier with ?carrier= (the API runs without tokens)")
		}
		return asked, checkID("carrier", asked)
	}
	carriers := p.Carriers()
	switch {
	case asked == "" && len(carriers) == 1:
		return carriers[0], nil
	case asked == "":
		return "", invalid("carrier", "the token may push for several carriers: name one with ?carrier=")
	}
	for _, c := range carriers {
		if c == asked {
			return c, nil
		}
	}
	if p.Has(ScopeAdmin) {
		return asked, checkID("carrier", asked)
	}
	return "", problem(http.StatusForbidden, "auth/forbidden-carrier", "forbidden",
		"the token may not push usage for carrier "+asked+": the carrier comes from the token")
}

// WhoAmI is GET /v1/whoami: who the token speaks for and what it may do,
// for the console to show only what the token reaches.
type WhoAmI struct {
	Name   string   `json:"name"`
	Scopes []string `json:"scopes"`
	// Open: the API runs without tokens (loopback only): anything goes.
	Open bool `json:"open"`
	// Read and Operator: on every account; else ReadAccounts and
	// OperatorAccounts list the accounts it may.
	Read             bool     `json:"read"`
	Operator         bool     `json:"operator"`
	Billing          bool     `json:"billing"`
	Admin            bool     `json:"admin"`
	ReadAccounts     []string `json:"read_accounts"`
	OperatorAccounts []string `json:"operator_accounts"`
	Carriers         []string `json:"carriers"` // usage:<carrier>: whose rejections it may re-submit
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	if p == nil {
		return ok(w, WhoAmI{Name: "open", Scopes: []string{}, Open: true, Read: true, Operator: true, Billing: true, Admin: true,
			ReadAccounts: []string{}, OperatorAccounts: []string{}, Carriers: []string{}})
	}
	me := WhoAmI{Name: p.Name, Scopes: p.Scopes, Read: p.Has(ScopeRead), Operator: p.Has(ScopeOperator),
		Billing: p.Has(ScopeBilling), Admin: p.Has(ScopeAdmin), ReadAccounts: []string{}, OperatorAccounts: []string{}, Carriers: []string{}}
	if a, limited := p.Accounts(ScopeRead); limited {
		me.ReadAccounts = append(me.ReadAccounts, a...)
	}
	if a, limited := p.Accounts(ScopeOperator); limited {
		me.OperatorAccounts = append(me.OperatorAccounts, a...)
	}
	me.Carriers = append(me.Carriers, p.Carriers()...)
	return ok(w, me)
}
