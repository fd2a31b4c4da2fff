package admin

import (
	"embed"
	"io/fs"
	"net/http"
)

// uiFiles is the dashboard: plain HTML, CSS and JavaScript, with uPlot
// vendored (make vendor-uplot refreshes it), all inside the binary.
//
//go:embed ui
var uiFiles embed.FS

// uiHandler serves the dashboard under /ui/. The files hold no data and
// need no token; every figure comes from the /v1 API, which the page calls
// with the token the user enters.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
