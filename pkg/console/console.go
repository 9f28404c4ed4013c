// Package console is the operator's web console, served at / by the API:
// plain HTML, CSS and one script module, embedded in the binary, with one
// vendored library (uPlot, for the charts; see assets/vendor/VENDOR.md).
// The console signs in with a bearer token and reads the public API only,
// so it shows exactly what the token reaches.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed assets
var assets embed.FS

// Files are the console's files, as served under /console/.
func Files() fs.FS {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embed pattern names the folder
	}
	return sub
}

// securityHeaders keep the console to its own scripts and out of frames.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// Index serves the console's page (at /).
func Index() http.Handler {
	page, err := fs.ReadFile(Files(), "index.html")
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w.Header())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(page)
	})
}

// Assets serves the console's scripts, styles and vendored library under
// /console/.
func Assets() http.Handler {
	files := http.StripPrefix("/console/", http.FileServerFS(Files()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		securityHeaders(w.Header())
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
