package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/baton-lb/baton/config"
)

// Certs holds the certificates baton's HTTPS listener serves. A reload
// swaps the whole set at once, so a handshake sees the old set or the new
// one, and a set with any bad certificate never replaces a good one.
type Certs struct {
	cur atomic.Pointer[certSet]
}

type certSet struct {
	list   []*tls.Certificate          // in config order; the first is the default
	exact  map[string]*tls.Certificate // lower-case host name
	wild   map[string]*tls.Certificate // "*.example.com" under "example.com"
	infos  []CertInfo
	loaded time.Time
}

// CertInfo describes one served certificate.
type CertInfo struct {
	File     string
	Names    []string
	NotAfter time.Time
}

// NewCerts loads certs; an error names the certificate that failed.
func NewCerts(certs []config.Certificate) (*Certs, error) {
	c := &Certs{}
	if err := c.Load(certs); err != nil {
		return nil, err
	}
	return c, nil
}

// Load reads every certificate and replaces the served set with them. On
// any error the set in service stays, and the error says why.
func (c *Certs) Load(certs []config.Certificate) error {
	if len(certs) == 0 {
		return errors.New("no certificate to serve")
	}
	now := time.Now()
	set := &certSet{exact: map[string]*tls.Certificate{}, wild: map[string]*tls.Certificate{}, loaded: now}
	for i, cc := range certs {
		pair, err := config.LoadCertificate(cc, now)
		if err != nil {
			return fmt.Errorf("tls.certificates[%d]: %w", i, err)
		}
		p := &pair
		set.list = append(set.list, p)
		names := config.CertificateNames(pair.Leaf)
		set.infos = append(set.infos, CertInfo{File: cc.Cert, Names: names, NotAfter: pair.Leaf.NotAfter})
		for _, n := range names {
			n = strings.ToLower(n)
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				if set.wild[rest] == nil {
					set.wild[rest] = p
				}
			} else if set.exact[n] == nil {
				set.exact[n] = p
			}
		}
	}
	c.cur.Store(set)
	return nil
}

// Infos describes the certificates in service.
func (c *Certs) Infos() []CertInfo {
	if s := c.cur.Load(); s != nil {
		return append([]CertInfo(nil), s.infos...)
	}
	return nil
}

// GetCertificate picks the certificate for a handshake by SNI: an exact
// name, then a wildcard one label up, then the first certificate.
func (c *Certs) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	s := c.cur.Load()
	if s == nil {
		return nil, errors.New("no certificate loaded")
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		if p := s.exact[name]; p != nil {
			return p, nil
		}
		if _, rest, ok := strings.Cut(name, "."); ok {
			if p := s.wild[rest]; p != nil {
				return p, nil
			}
		}
	}
	return s.list[0], nil
}

// TLSConfig is the server side of baton's HTTPS listener: the minimum
// version asked for, forward-secret AEAD suites only for TLS 1.2 (TLS 1.3's
// are fixed and all modern), certificates by SNI from certs, and ALPN
// offering only what baton speaks to clients: HTTP/1.1.
func TLSConfig(t config.TLS, certs *Certs) *tls.Config {
	min := uint16(tls.VersionTLS12)
	if t.MinVersion == "1.3" {
		min = tls.VersionTLS13
	}
	return &tls.Config{
		MinVersion:     min,
		GetCertificate: certs.GetCertificate,
		NextProtos:     []string{"http/1.1"},
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
}

// httpsPort is the port part of the HTTPS listen address, "" for 443.
func httpsPort(listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil || port == "443" {
		return ""
	}
	return port
}
