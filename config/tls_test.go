package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/testbed"
)

// tlsConfig writes baton.yaml with an HTTPS listener using the given
// certificate entries (YAML flow mappings) and returns its path.
func tlsConfig(t *testing.T, dir, tlsYAML string) string {
	t.Helper()
	path := filepath.Join(dir, "baton.yaml")
	data := fmt.Sprintf(`listen: 127.0.0.1:8080
admin: {listen: "off"}
tls:
%s
pools:
  - name: shop
    routes: [{host: shop.test}]
    backends:
      - {name: s1, address: "127.0.0.1:9", version: v1}
  - name: api
    routes: [{host: api.test}]
    backends:
      - {name: a1, address: "127.0.0.1:9", version: v1}
`, tlsYAML)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTLSCertificateChecks: certificate files are read when the config is
// loaded (relative to the config file); unusable ones are errors with
// their key's path and line, and those expiring soon or not covering a
// route's host are warnings.
func TestTLSCertificateChecks(t *testing.T) {
	dir := t.TempDir()
	ca := testbed.NewCA(t)
	now := time.Now()
	ca.Issue(t, []string{"shop.test", "api.test"}, now.Add(-time.Hour), now.Add(90*24*time.Hour)).Write(t, dir, "good")
	ca.Issue(t, []string{"shop.test"}, now.Add(-time.Hour), now.Add(5*24*time.Hour)).Write(t, dir, "soon")
	ca.Issue(t, []string{"shop.test"}, now.Add(-48*time.Hour), now.Add(-24*time.Hour)).Write(t, dir, "old")
	other := ca.Issue(t, []string{"shop.test"}, now.Add(-time.Hour), now.Add(90*24*time.Hour))
	if err := os.WriteFile(filepath.Join(dir, "mismatch.crt"), other.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, "good.key"))
	if err := os.WriteFile(filepath.Join(dir, "mismatch.key"), good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "junk.crt"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Valid, relative paths: no error, no warning.
	cfg, err := config.Load(tlsConfig(t, dir, `  listen: 127.0.0.1:8443
  certificates:
    - {cert: good.crt, key: good.key}`))
	if err != nil {
		t.Fatalf("a valid HTTPS config: %v", err)
	}
	if len(cfg.Warnings) != 0 || cfg.TLS.MinVersion != "1.2" || cfg.TLS.Certificates[0].Cert != filepath.Join(dir, "good.crt") {
		t.Errorf("warnings %q, min version %q, cert %q", cfg.Warnings, cfg.TLS.MinVersion, cfg.TLS.Certificates[0].Cert)
	}

	// Expiring within 14 days, and api.test covered by no certificate:
	// warnings, not errors.
	cfg, err = config.Load(tlsConfig(t, dir, `  listen: 127.0.0.1:8443
  certificates:
    - {cert: soon.crt, key: soon.key}`))
	if err != nil {
		t.Fatalf("an expiring certificate is no error: %v", err)
	}
	warn := strings.Join(cfg.Warnings, "\n")
	for _, want := range []string{"tls.certificates[0]: " + filepath.Join(dir, "soon.crt") + " expires on ", "in 4 day(s); renew it",
		"pools[1].routes[0].host: no certificate covers api.test"} {
		if !strings.Contains(warn, want) {
			t.Errorf("warnings %q lack %q", warn, want)
		}
	}

	// Every broken certificate is an error, with its line.
	_, err = config.Load(tlsConfig(t, dir, `  listen: 127.0.0.1:8443
  min_version: "1.1"
  certificates:
    - {cert: old.crt, key: old.key}
    - {cert: mismatch.crt, key: mismatch.key}
    - {cert: missing.crt, key: missing.key}
    - {cert: junk.crt, key: good.key}
    - {cert: good.crt}`))
	if err == nil {
		t.Fatal("broken certificates loaded")
	}
	got := err.Error()
	for _, want := range []string{
		`tls.min_version: must be "1.2" or "1.3", got "1.1" (baton.yaml:5)`,
		"tls.certificates[0]: " + filepath.Join(dir, "old.crt") + " expired on ",
		"(baton.yaml:7)",
		"tls.certificates[1]: " + filepath.Join(dir, "mismatch.crt") + " with " + filepath.Join(dir, "mismatch.key") + ": private key does not match public key (baton.yaml:8)",
		"tls.certificates[2]: cannot read " + filepath.Join(dir, "missing.crt") + ": no such file or directory (baton.yaml:9)",
		"tls.certificates[3]: " + filepath.Join(dir, "junk.crt") + " with " + filepath.Join(dir, "good.key") + ": failed to find any PEM data in certificate input (baton.yaml:10)",
		"tls.certificates[4].key: the private key's PEM file is required",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors lack %q:\n%s", want, got)
		}
	}

	// Settings that cannot work together.
	_, err = config.Parse([]byte(`listen: 127.0.0.1:8080
tls: {redirect_http: true, certificates: [{cert: a, key: b}]}
pools:
  - name: shop
    backends: [{name: s1, address: "127.0.0.1:9"}]
`), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "tls.certificates: are set but tls.listen is empty") ||
		!strings.Contains(err.Error(), "tls.redirect_http: needs tls.listen") {
		t.Errorf("certificates and redirect without tls.listen: %v", err)
	}
	_, err = config.Parse([]byte(`listen: 127.0.0.1:8080
tls: {listen: 127.0.0.1:8080}
pools:
  - name: shop
    backends: [{name: s1, address: "127.0.0.1:9"}]
`), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "tls.listen: is the same address as listen") ||
		!strings.Contains(err.Error(), "tls.certificates: at least one certificate is needed") {
		t.Errorf("tls.listen on the plain address without certificates: %v", err)
	}
}
