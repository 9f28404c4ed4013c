package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// apiClient calls the all-in-one's API as a careful client would: a
// request that got no answer, a 5xx or a 429 is sent again, same body and
// same headers, until it is answered or ctx ends. It is safe for
// concurrent use.
type apiClient struct {
	base string
	http *http.Client

	noAnswer  atomic.Int64 // attempts that got no HTTP answer (refused, reset, timed out)
	unavail   atomic.Int64 // attempts answered 5xx or 429
	replayed  atomic.Int64 // answers marked Idempotent-Replayed
	attempts  atomic.Int64
	lastError atomic.Value // string: the last attempt's failure, for logs
}

func newAPIClient(base string) *apiClient {
	return &apiClient{base: base, http: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 10 * time.Second},
	}}
}

// answer is a final HTTP answer (2xx or 4xx).
type answer struct {
	status int
	body   []byte
}

// statusError is a 4xx the caller did not expect.
type statusError struct {
	method, path string
	status       int
	body         string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.method, e.path, e.status, e.body)
}

// do sends the request until it gets a final answer. A 2xx is returned as
// is; a 4xx is returned as an answer when accept4xx lists it, else as a
// *statusError. Retries back off from 50 ms to 1 s, without end but ctx's.
func (a *apiClient) do(ctx context.Context, method, path, ctype, idemKey string, body []byte, accept4xx ...int) (answer, error) {
	bo := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(0)), ctx)
	var ans answer
	op := func() error {
		a.attempts.Add(1)
		req, err := http.NewRequestWithContext(ctx, method, a.base+path, bytes.NewReader(body))
		if err != nil {
			return backoff.Permanent(err)
		}
		req.Header.Set("Content-Type", ctype)
		if idemKey != "" {
			req.Header.Set("Idempotency-Key", idemKey)
		}
		resp, err := a.http.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return backoff.Permanent(ctx.Err())
			}
			a.noAnswer.Add(1)
			a.lastError.Store(err.Error())
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil { // the answer was cut: it may or may not have been a 2xx
			a.noAnswer.Add(1)
			a.lastError.Store(err.Error())
			return err
		}
		switch {
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			a.unavail.Add(1)
			a.lastError.Store(fmt.Sprintf("HTTP %d: %s", resp.StatusCode, truncate(b, 200)))
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		case resp.StatusCode >= 400:
			for _, s := range accept4xx {
				if s == resp.StatusCode {
					ans = answer{resp.StatusCode, b}
					return nil
				}
			}
			return backoff.Permanent(&statusError{method, path, resp.StatusCode, truncate(b, 500)})
		}
		if resp.Header.Get("Idempotent-Replayed") == "true" {
			a.replayed.Add(1)
		}
		ans = answer{resp.StatusCode, b}
		return nil
	}
	if err := backoff.Retry(op, bo); err != nil {
		var se *statusError
		if errors.As(err, &se) {
			return ans, se
		}
		if ctx.Err() != nil {
			last, _ := a.lastError.Load().(string)
			return ans, fmt.Errorf("%s %s: no answer before the deadline (last: %s): %w", method, path, last, ctx.Err())
		}
		return ans, err
	}
	return ans, nil
}

// get is a single GET with a timeout, no retries: for polling.
func (a *apiClient) get(ctx context.Context, path string, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
