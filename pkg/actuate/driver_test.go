package actuate

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/cenkalti/backoff/v4"
)

// The example file loads, and a value with quotes cannot break the body
// the template writes (json escapes it).
func TestHTTPDriverTemplates(t *testing.T) {
	t.Setenv("CMCC_PROVISIONING_TOKEN", "t")
	if _, err := LoadConfig(filepath.Join("..", "..", "deploy", "carriers.example.json")); err != nil {
		t.Fatalf("the example: %v", err)
	}
	var body, path, key string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body, path, key = string(b), r.URL.EscapedPath(), r.Header.Get("Idempotency-Key")
		if r.URL.Path == "/refuse" {
			http.Error(w, "no such card", http.StatusNotFound)
		}
	}))
	defer srv.Close()
	d, err := NewHTTPDriver(HTTPConfig{BaseURL: srv.URL, Actions: map[string]Call{
		"stop":   {Method: "post", Path: "/cards/{{.ICCID}}", Body: `{"note": {{json .Reasons}}}`},
		"cancel": {Path: "/refuse"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Do(context.Background(), Action{Kind: "stop", ICCID: "8986", Reasons: []string{`x", "evil": "1`}, EventID: "0-1-0"}); err != nil {
		t.Fatal(err)
	}
	if path != "/cards/8986" || key != "0-1-0" || body != `{"note": ["x\", \"evil\": \"1"]}` {
		t.Fatalf("sent %s %s %q", path, key, body)
	}
	_, err = d.Do(context.Background(), Action{Kind: "cancel", ICCID: "8986"})
	var perm *backoff.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("a 404 is a refusal, not to be retried: %v", err)
	}
	if _, err := d.Do(context.Background(), Action{Kind: "resume"}); !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("an action without a call: %v", err)
	}
	if _, err := d.Do(context.Background(), Action{Kind: "stop", ICCID: "x/../../other?cancel=1"}); err != nil {
		t.Fatal(err)
	}
	if path != "/cards/x%2F..%2F..%2Fother%3Fcancel=1" {
		t.Fatalf("a value escaped its path segment: %q", path)
	}
	if _, err := NewHTTPDriver(HTTPConfig{BaseURL: srv.URL, Headers: map[string]string{"Authorization": "Bearer ${NO_SUCH_VAR_FOR_TEST}"}}); err == nil {
		t.Fatal("a header naming an unset variable loaded")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	_ = os.WriteFile(bad, []byte(`{"carriers": {"x": {"base_url": "ftp://x", "actions": {}}}}`), 0o600)
	if _, err := LoadConfig(bad); err == nil {
		t.Fatal("an ftp base_url loaded")
	}
}
