// Package actuate turns cardmeter's stops, resumes and cancellations into
// calls to each card's carrier: a driver per carrier (a generic HTTP/JSON
// one, configured in a file, covers the common provisioning APIs), and the
// actuator role that reads the events, calls the driver in order per card,
// retries, and writes each outcome back into the log.
package actuate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Action is what the carrier is asked to do with a card.
type Action struct {
	Kind      string   // stop, resume, cancel
	ICCID     string   `json:"iccid"`
	IMSI      string   `json:"imsi,omitempty"`
	MSISDN    string   `json:"msisdn,omitempty"`
	AccountID string   `json:"account_id"`
	Reasons   []string `json:"reasons,omitempty"` // the card's stop reasons in cardmeter
	EventID   string   `json:"event_id"`          // the event acted on: the idempotency key
}

// Driver acts on one carrier's cards.
type Driver interface {
	// Do asks the carrier to act; it returns the carrier's answer (for
	// the record), and an error when it did not. A backoff.Permanent error
	// will not succeed on a retry.
	Do(ctx context.Context, a Action) (detail string, err error)
}

// CarrierCard is a card as its carrier has it.
type CarrierCard struct {
	ICCID  string
	Active bool // in service at the carrier
}

// StateReader is a driver that can list the carrier's cards, a page at a
// time (cursor "" for the first; next "" after the last), for
// reconciliation.
type StateReader interface {
	States(ctx context.Context, cursor string) (page []CarrierCard, next string, err error)
}

// Config is the actuator's file: a driver per carrier.
type Config struct {
	Carriers map[string]HTTPConfig `json:"carriers"`
}

// HTTPConfig configures the generic HTTP/JSON driver of a carrier.
type HTTPConfig struct {
	BaseURL string `json:"base_url"`
	// Headers are sent with every call; ${NAME} is replaced by the
	// environment variable NAME (secrets stay out of the file).
	Headers map[string]string `json:"headers,omitempty"`
	Timeout string            `json:"timeout,omitempty"` // default 10s
	// Actions by kind (stop, resume, cancel): a kind without one is not
	// sent to this carrier.
	Actions map[string]Call `json:"actions"`
	// State lists the carrier's cards, for `cardmeter reconcile`.
	State *StateCall `json:"state,omitempty"`
}

// StateCall is how a carrier lists its cards: Path is a template over
// {{.Cursor}}; the answer is a JSON object whose Items field holds the
// cards (each an object with the ICCID and Status fields), and whose Next
// field the next page's cursor (empty or absent after the last).
type StateCall struct {
	Method string   `json:"method,omitempty"` // default GET
	Path   string   `json:"path"`
	Items  string   `json:"items"`  // default "items"
	ICCID  string   `json:"iccid"`  // default "iccid"
	Status string   `json:"status"` // default "status"
	Active []string `json:"active"` // the statuses that mean in service; default ["active"]
	Next   string   `json:"next"`   // default "next"
}

// Call is one HTTP call: Path and Body are Go templates over an Action
// ({{.ICCID}}, {{.IMSI}}, {{.MSISDN}}, {{.Kind}}, {{.EventID}},
// {{json .Reasons}}: json writes a value as JSON).
type Call struct {
	Method  string `json:"method"`
	Path    string `json:"path"`
	Body    string `json:"body,omitempty"`
	Success []int  `json:"success,omitempty"` // default any 2xx
}

// LoadConfig reads an actuator file and makes its drivers.
func LoadConfig(path string) (map[string]Driver, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg Config
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	drivers := map[string]Driver{}
	for carrier, hc := range cfg.Carriers {
		drv, err := NewHTTPDriver(hc)
		if err != nil {
			return nil, fmt.Errorf("%s: carrier %s: %w", path, carrier, err)
		}
		drivers[carrier] = drv
	}
	return drivers, nil
}

// HTTPDriver is the generic HTTP/JSON driver.
type HTTPDriver struct {
	base    string
	headers map[string]string
	client  *http.Client
	calls   map[string]call
	state   *StateCall
	statePT *template.Template
}

type call struct {
	method     string
	path, body *template.Template
	success    []int
}

var funcs = template.FuncMap{"json": func(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}}

// NewHTTPDriver makes a driver from its configuration.
func NewHTTPDriver(hc HTTPConfig) (*HTTPDriver, error) {
	if !strings.HasPrefix(hc.BaseURL, "http://") && !strings.HasPrefix(hc.BaseURL, "https://") {
		return nil, fmt.Errorf("base_url %q: http or https", hc.BaseURL)
	}
	timeout := 10 * time.Second
	if hc.Timeout != "" {
		t, err := time.ParseDuration(hc.Timeout)
		if err != nil || t <= 0 {
			return nil, fmt.Errorf("timeout %q: a duration like 10s", hc.Timeout)
		}
		timeout = t
	}
	d := &HTTPDriver{base: strings.TrimSuffix(hc.BaseURL, "/"), headers: map[string]string{}, client: &http.Client{Timeout: timeout}, calls: map[string]call{}}
	for k, v := range hc.Headers {
		var missing []string
		d.headers[k] = os.Expand(v, func(name string) string {
			val, ok := os.LookupEnv(name)
			if !ok {
				missing = append(missing, name)
			}
			return val
		})
		if len(missing) > 0 {
			return nil, fmt.Errorf("header %s: the environment has no %s", k, strings.Join(missing, ", "))
		}
	}
	for kind, c := range hc.Actions {
		switch kind {
		case "stop", "resume", "cancel":
		default:
			return nil, fmt.Errorf("action %q: one of stop, resume, cancel", kind)
		}
		pt, err := template.New("path").Funcs(funcs).Parse(c.Path)
		if err != nil {
			return nil, fmt.Errorf("action %s: path: %w", kind, err)
		}
		bt, err := template.New("body").Funcs(funcs).Parse(c.Body)
		if err != nil {
			return nil, fmt.Errorf("action %s: body: %w", kind, err)
		}
		m := strings.ToUpper(c.Method)
		if m == "" {
			m = http.MethodPost
		}
		d.calls[kind] = call{method: m, path: pt, body: bt, success: c.Success}
	}
	if sc := hc.State; sc != nil {
		st := *sc
		def := func(v *string, d string) {
			if *v == "" {
				*v = d
			}
		}
		def(&st.Method, http.MethodGet)
		def(&st.Items, "items")
		def(&st.ICCID, "iccid")
		def(&st.Status, "status")
		def(&st.Next, "next")
		if len(st.Active) == 0 {
			st.Active = []string{"active"}
		}
		pt, err := template.New("state").Funcs(funcs).Parse(st.Path)
		if err != nil {
			return nil, fmt.Errorf("state: path: %w", err)
		}
		d.state, d.statePT = &st, pt
	}
	return d, nil
}

// ErrNoState is a carrier whose driver cannot list its cards.
var ErrNoState = errors.New("no state call configured for this carrier")

// States lists a page of the carrier's cards.
func (d *HTTPDriver) States(ctx context.Context, cursor string) ([]CarrierCard, string, error) {
	if d.state == nil {
		return nil, "", ErrNoState
	}
	var path bytes.Buffer
	if err := d.statePT.Execute(&path, struct{ Cursor string }{url.QueryEscape(cursor)}); err != nil {
		return nil, "", err
	}
	req, err := http.NewRequestWithContext(ctx, d.state.Method, d.base+path.String(), nil)
	if err != nil {
		return nil, "", err
	}
	for k, v := range d.headers {
		req.Header.Set(k, v)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, "", fmt.Errorf("the carrier answered %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var body map[string]json.RawMessage
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return nil, "", fmt.Errorf("the carrier's list: %w", err)
	}
	var items []map[string]any
	if err := json.Unmarshal(body[d.state.Items], &items); err != nil {
		return nil, "", fmt.Errorf("the carrier's list: field %q: %w", d.state.Items, err)
	}
	page := make([]CarrierCard, 0, len(items))
	for _, it := range items {
		iccid, _ := it[d.state.ICCID].(string)
		status, _ := it[d.state.Status].(string)
		if iccid == "" {
			continue
		}
		page = append(page, CarrierCard{ICCID: iccid, Active: slices.Contains(d.state.Active, status)})
	}
	var next string
	if raw, ok := body[d.state.Next]; ok {
		_ = json.Unmarshal(raw, &next)
	}
	return page, next, nil
}

// Can says whether the carrier's entry has a call for an action kind.
func (d *HTTPDriver) Can(kind string) bool { _, ok := d.calls[kind]; return ok }

// ErrCredentials is a carrier refusing the driver's credentials (401,
// 403): its calls are retried, and the actuator reports itself unhealthy
// meanwhile.
var ErrCredentials = errors.New("the carrier refuses the credentials (its headers are read at start: fix them and restart)")

// ErrNotConfigured is an action kind the carrier's driver has no call for.
var ErrNotConfigured = errors.New("no call configured for this action")

// Do sends the action's call, with the event id as its Idempotency-Key.
func (d *HTTPDriver) Do(ctx context.Context, a Action) (string, error) {
	c, ok := d.calls[a.Kind]
	if !ok {
		return "", backoff.Permanent(fmt.Errorf("%s: %w", a.Kind, ErrNotConfigured))
	}
	var path, body bytes.Buffer
	// the path's values escaped: a value cannot add a segment or a query
	esc := a
	esc.ICCID, esc.IMSI, esc.MSISDN, esc.AccountID, esc.EventID = url.PathEscape(a.ICCID), url.PathEscape(a.IMSI),
		url.PathEscape(a.MSISDN), url.PathEscape(a.AccountID), url.PathEscape(a.EventID)
	if err := c.path.Execute(&path, esc); err != nil {
		return "", backoff.Permanent(err)
	}
	if err := c.body.Execute(&body, a); err != nil {
		return "", backoff.Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, c.method, d.base+path.String(), bytes.NewReader(body.Bytes()))
	if err != nil {
		return "", backoff.Permanent(err)
	}
	if body.Len() > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Idempotency-Key", a.EventID)
	for k, v := range d.headers {
		req.Header.Set(k, v)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	detail := fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(answer)))
	if (len(c.success) == 0 && resp.StatusCode/100 == 2) || slices.Contains(c.success, resp.StatusCode) {
		return detail, nil
	}
	err = fmt.Errorf("the carrier answered %s", detail)
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		// credentials: tried again (the actions wait, not lost) until
		// the headers are fixed and the actuator restarted with them
		return detail, fmt.Errorf("%w: %w", ErrCredentials, err)
	case http.StatusTooManyRequests, http.StatusRequestTimeout:
		return detail, err // busy: tried again
	}
	if resp.StatusCode/100 == 4 {
		return detail, backoff.Permanent(err) // a refusal: the same call again would be refused again
	}
	return detail, err // down: tried again
}
