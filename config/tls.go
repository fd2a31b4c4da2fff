package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ExpiryWarning is how close to its expiry a certificate is warned about.
const ExpiryWarning = 14 * 24 * time.Hour

// LoadCertificate reads a certificate and key pair from PEM files and checks
// it: readable, the key matches, within its validity period. The returned
// certificate has its Leaf parsed.
func LoadCertificate(c Certificate, now time.Time) (tls.Certificate, error) {
	for _, f := range []string{c.Cert, c.Key} {
		if _, err := os.Stat(f); err != nil {
			return tls.Certificate{}, fmt.Errorf("cannot read %s: %v", f, unwrapPath(err))
		}
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s with %s: %v", c.Cert, c.Key, strings.TrimPrefix(err.Error(), "tls: "))
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %v", c.Cert, err)
	}
	pair.Leaf = leaf
	switch {
	case now.After(leaf.NotAfter):
		return tls.Certificate{}, fmt.Errorf("%s expired on %s", c.Cert, leaf.NotAfter.UTC().Format(time.DateOnly))
	case now.Before(leaf.NotBefore):
		return tls.Certificate{}, fmt.Errorf("%s is not valid before %s", c.Cert, leaf.NotBefore.UTC().Format(time.DateTime))
	}
	return pair, nil
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// CertificateNames are the host names a certificate serves: its DNS
// names, or its common name when it has none.
func CertificateNames(leaf *x509.Certificate) []string {
	if len(leaf.DNSNames) > 0 {
		return leaf.DNSNames
	}
	if leaf.Subject.CommonName != "" {
		return []string{leaf.Subject.CommonName}
	}
	return nil
}

// resolveTLSPaths makes the certificate files' paths absolute against dir
// (the config file's directory).
func (c *Config) resolveTLSPaths(dir string) {
	if dir == "" {
		return
	}
	certs := []*Certificate{&c.Admin.TLS}
	for i := range c.TLS.Certificates {
		certs = append(certs, &c.TLS.Certificates[i])
	}
	for _, cc := range certs {
		if cc.Cert != "" && !filepath.IsAbs(cc.Cert) {
			cc.Cert = filepath.Join(dir, cc.Cert)
		}
		if cc.Key != "" && !filepath.IsAbs(cc.Key) {
			cc.Key = filepath.Join(dir, cc.Key)
		}
	}
}

// adminTLS checks the admin listener's certificate.
func (v *validator) adminTLS(c *Config) {
	t := c.Admin.TLS
	switch {
	case t == Certificate{}:
	case t.Cert == "":
		v.add("admin.tls.cert", "the certificate's PEM file is required with admin.tls.key")
	case t.Key == "":
		v.add("admin.tls.key", "the private key's PEM file is required with admin.tls.cert")
	default:
		if _, err := LoadCertificate(t, time.Now()); err != nil {
			v.add("admin.tls", "%v", err)
		}
	}
}

// tls checks the HTTPS settings and the certificate files.
func (v *validator) tls(c *Config) {
	t := c.TLS
	if t.Listen == "" {
		if len(t.Certificates) > 0 {
			v.add("tls.certificates", "are set but tls.listen is empty: set it (such as :8443) to serve HTTPS")
		}
		if t.RedirectHTTP {
			v.add("tls.redirect_http", "needs tls.listen: there is no HTTPS to redirect to")
		}
		return
	}
	v.listenAddr("tls.listen", t.Listen)
	if t.Listen == c.Listen {
		v.add("tls.listen", "is the same address as listen (%s); HTTPS needs its own", t.Listen)
	}
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		v.add("tls.min_version", `must be "1.2" or "1.3", got %q`, t.MinVersion)
	}
	if len(t.Certificates) == 0 {
		v.add("tls.certificates", "at least one certificate is needed for tls.listen")
	}
	now := time.Now()
	for i, cc := range t.Certificates {
		path := fmt.Sprintf("tls.certificates[%d]", i)
		switch {
		case cc.Cert == "":
			v.add(path+".cert", "the certificate's PEM file is required")
		case cc.Key == "":
			v.add(path+".key", "the private key's PEM file is required")
		default:
			if _, err := LoadCertificate(cc, now); err != nil {
				v.add(path, "%v", err)
			}
		}
	}
}

// tlsWarnings are what does not stop baton but will hurt: certificates
// expiring within ExpiryWarning, route hosts no certificate covers.
func (c *Config) tlsWarnings(now time.Time) []string {
	if c.TLS.Listen == "" {
		return nil
	}
	var out []string
	var leaves []*x509.Certificate
	for i, cc := range c.TLS.Certificates {
		pair, err := LoadCertificate(cc, now)
		if err != nil {
			continue // an error already
		}
		leaves = append(leaves, pair.Leaf)
		if left := pair.Leaf.NotAfter.Sub(now); left < ExpiryWarning {
			out = append(out, fmt.Sprintf("tls.certificates[%d]: %s expires on %s, in %d day(s); renew it",
				i, cc.Cert, pair.Leaf.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24)))
		}
	}
	if len(leaves) == 0 {
		return out
	}
	for i, p := range c.Pools {
		for j, r := range p.Routes {
			if r.Host == "" {
				continue
			}
			host := r.Host
			if strings.HasPrefix(host, "*.") {
				host = "www" + host[1:] // a name the wildcard route matches
			}
			covered := false
			for _, l := range leaves {
				covered = covered || l.VerifyHostname(host) == nil
			}
			if !covered {
				out = append(out, fmt.Sprintf("pools[%d].routes[%d].host: no certificate covers %s; HTTPS clients asking for it get a name mismatch",
					i, j, r.Host))
			}
		}
	}
	return out
}
