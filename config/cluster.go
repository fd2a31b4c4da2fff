package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Cluster makes several batons share their runtime decisions through etcd.
// Left out (the default), baton runs alone on its state file.
type Cluster struct {
	Etcd Etcd `yaml:"etcd"`
	// Instance names this baton among the others: in GET /v1/cluster, in
	// the audit log and in the drain's list of instances still busy.
	// Default: the host name.
	Instance string `yaml:"instance"`
}

// Etcd is how baton reaches etcd.
type Etcd struct {
	// Endpoints are etcd's client URLs (http://host:2379, or https:// with
	// tls set). At least one turns the cluster on.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is where this release's keys live ("/baton/shop/"); batons
	// that share a prefix share their decisions. Default "/baton/".
	Prefix string `yaml:"prefix"`
	// TLS: the CA that signs etcd's certificate, and this baton's client
	// certificate and key when etcd asks for one. Relative paths are
	// relative to the config file.
	TLS EtcdTLS `yaml:"tls"`
	// Username and PasswordFile: etcd's authentication, when it is on. The
	// file holds the password alone (a trailing newline is ignored).
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// Password is read from PasswordFile at load time.
	Password string `yaml:"-"`
	// DialTimeout bounds connecting to etcd; RequestTimeout each read or
	// write. Defaults 2s and 5s.
	DialTimeout    time.Duration `yaml:"dial_timeout"`
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// EtcdTLS holds the PEM files for a TLS connection to etcd.
type EtcdTLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Defaults of the cluster section.
const (
	DefaultEtcdPrefix         = "/baton/"
	DefaultEtcdDialTimeout    = 2 * time.Second
	DefaultEtcdRequestTimeout = 5 * time.Second
)

// Enabled reports whether the config asks for a cluster.
func (c Cluster) Enabled() bool { return len(c.Etcd.Endpoints) > 0 }

func (c *Cluster) applyDefaults() {
	if !c.Enabled() {
		return
	}
	if c.Etcd.Prefix == "" {
		c.Etcd.Prefix = DefaultEtcdPrefix
	}
	setDur(&c.Etcd.DialTimeout, DefaultEtcdDialTimeout)
	setDur(&c.Etcd.RequestTimeout, DefaultEtcdRequestTimeout)
	if c.Instance == "" {
		if h, err := os.Hostname(); err == nil {
			c.Instance = h
		}
	}
}

func (c *Cluster) resolvePaths(dir string) {
	if dir == "" {
		return
	}
	for _, p := range []*string{&c.Etcd.TLS.CA, &c.Etcd.TLS.Cert, &c.Etcd.TLS.Key, &c.Etcd.PasswordFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// readPassword loads the password file (validation has checked it).
func (c *Cluster) readPassword() {
	if c.Etcd.PasswordFile == "" {
		return
	}
	data, err := os.ReadFile(c.Etcd.PasswordFile)
	if err == nil {
		c.Etcd.Password = strings.TrimRight(string(data), "\r\n")
	}
}

// cluster checks the cluster section.
func (v *validator) cluster(c Cluster) {
	e := c.Etcd
	if !c.Enabled() {
		if c.Instance != "" || e.Prefix != "" || e.TLS != (EtcdTLS{}) || e.Username != "" || e.PasswordFile != "" {
			v.add("cluster.etcd.endpoints", "at least one etcd endpoint is needed for the other cluster settings to mean anything (such as http://127.0.0.1:2379)")
		}
		return
	}
	for i, ep := range e.Endpoints {
		if msg := checkEndpoint(ep); msg != "" {
			v.add(fmt.Sprintf("cluster.etcd.endpoints[%d]", i), "%s, got %q", msg, ep)
		}
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") || strings.Contains(e.Prefix, "//") || len(e.Prefix) > 200 {
		v.add("cluster.etcd.prefix", "must start and end with / (such as /baton/shop/), got %q", e.Prefix)
	}
	if c.Instance == "" {
		v.add("cluster.instance", "is required: the host name could not be read")
	} else if !ValidName(c.Instance) {
		v.add("cluster.instance", "must be letters, digits, '.', '_' or '-' (at most 64), got %q", c.Instance)
	}
	switch {
	case (e.TLS.Cert == "") != (e.TLS.Key == ""):
		v.add("cluster.etcd.tls", "cert and key go together: set both or neither")
	case e.TLS.Cert != "":
		if _, err := LoadCertificate(Certificate{Cert: e.TLS.Cert, Key: e.TLS.Key}, time.Now()); err != nil {
			v.add("cluster.etcd.tls", "%v", err)
		}
	}
	if e.TLS.CA != "" {
		if _, err := os.ReadFile(e.TLS.CA); err != nil {
			v.add("cluster.etcd.tls.ca", "cannot be read: %v", err)
		}
	}
	switch {
	case e.Username == "" && e.PasswordFile != "":
		v.add("cluster.etcd.username", "is required with password_file")
	case e.Username != "" && e.PasswordFile == "":
		v.add("cluster.etcd.password_file", "is required with username")
	case e.PasswordFile != "":
		if data, err := os.ReadFile(e.PasswordFile); err != nil {
			v.add("cluster.etcd.password_file", "cannot be read: %v", err)
		} else if strings.TrimRight(string(data), "\r\n") == "" {
			v.add("cluster.etcd.password_file", "%s is empty", e.PasswordFile)
		}
	}
	v.positive("cluster.etcd.dial_timeout", e.DialTimeout)
	v.positive("cluster.etcd.request_timeout", e.RequestTimeout)
}

// checkEndpoint returns what is wrong with an etcd endpoint, or "".
func checkEndpoint(ep string) string {
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "must be a URL such as http://127.0.0.1:2379"
	}
	switch u.Scheme {
	case "http", "https":
	default:
		return "must be http:// or https://"
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "needs a host and a port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "needs a port 1-65535"
	}
	return ""
}
