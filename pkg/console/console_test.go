package console

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The vendored library is the one VENDOR.md names, byte for byte: its
// digests are checked, and the page loads the version it names.
func TestVendoredFilesArePinned(t *testing.T) {
	doc, err := fs.ReadFile(Files(), "vendor/VENDOR.md")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	sc := bufio.NewScanner(strings.NewReader(string(doc)))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			continue
		}
		b, err := fs.ReadFile(Files(), "vendor/"+name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
			t.Errorf("vendor/%s: sha256 %x, VENDOR.md says %s", name, got, sum)
		}
		checked++
	}
	if checked != 3 {
		t.Fatalf("VENDOR.md lists %d digests, want the 3 files of uPlot", checked)
	}
	page, _ := fs.ReadFile(Files(), "index.html")
	for _, ref := range []string{"/console/vendor/uplot-1.6.32/uPlot.iife.min.js", "/console/vendor/uplot-1.6.32/uPlot.min.css"} {
		if !strings.Contains(string(page), ref) {
			t.Errorf("index.html does not load %s", ref)
		}
	}
}

// The page and its files are served with a policy that allows only the
// console's own scripts; folders are not listed; an unknown file is 404.
func TestServing(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", Index())
	mux.Handle("GET /console/", Assets())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(path string) *http.Response {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, c := range []struct {
		path, ctype string
		code        int
	}{
		{"/", "text/html; charset=utf-8", 200},
		{"/console/app.js", "text/javascript; charset=utf-8", 200},
		{"/console/style.css", "text/css; charset=utf-8", 200},
		{"/console/vendor/uplot-1.6.32/uPlot.iife.min.js", "text/javascript; charset=utf-8", 200},
		{"/console/vendor/", "", 404},
		{"/console/nothing.js", "", 404},
	} {
		resp := get(c.path)
		if resp.StatusCode != c.code {
			t.Errorf("%s: %d, want %d", c.path, resp.StatusCode, c.code)
			continue
		}
		if c.code != 200 {
			continue
		}
		if got := resp.Header.Get("Content-Type"); got != c.ctype {
			t.Errorf("%s: Content-Type %q, want %q", c.path, got, c.ctype)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", c.path, csp)
		}
	}
}

// The console keeps to its policy: no inline script or style in the page,
// and the script never writes markup from strings (every text goes in as
// text, so nothing a record or a token holds can run).
func TestNoInlineCodeOrMarkup(t *testing.T) {
	page, _ := fs.ReadFile(Files(), "index.html")
	for _, bad := range []string{"<script>", "style=", "onclick=", "onload="} {
		if strings.Contains(string(page), bad) {
			t.Errorf("index.html has %q", bad)
		}
	}
	app, _ := fs.ReadFile(Files(), "app.js")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(string(app), bad) {
			t.Errorf("app.js uses %s", bad)
		}
	}
}
