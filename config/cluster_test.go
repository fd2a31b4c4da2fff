package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/config"
)

const clusterPools = `
pools:
  - name: web
    backends:
      - {name: a, address: 127.0.0.1:9001}
`

func TestClusterOffByDefault(t *testing.T) {
	cfg := mustParse(t, clusterPools)
	if cfg.Cluster.Enabled() {
		t.Fatalf("cluster on without endpoints: %+v", cfg.Cluster)
	}
}

func TestClusterDefaults(t *testing.T) {
	cfg := mustParse(t, "cluster: {etcd: {endpoints: [http://127.0.0.1:2379]}}"+clusterPools)
	c := cfg.Cluster
	host, _ := os.Hostname()
	if !c.Enabled() || c.Etcd.Prefix != "/baton/" || c.Etcd.DialTimeout != 2*time.Second ||
		c.Etcd.RequestTimeout != 5*time.Second || c.Instance != host {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestClusterFilesRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "etcd.pass"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "baton.yaml")
	body := `cluster:
  instance: lb-1
  etcd:
    endpoints: ["https://127.0.0.1:2379", "http://[::1]:2379"]
    prefix: /baton/shop/
    username: baton
    password_file: etcd.pass
    tls: {ca: ca.pem}
` + clusterPools
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Cluster.Etcd
	if e.Password != "s3cret" || e.TLS.CA != filepath.Join(dir, "ca.pem") || e.PasswordFile != filepath.Join(dir, "etcd.pass") ||
		cfg.Cluster.Instance != "lb-1" || e.Prefix != "/baton/shop/" {
		t.Fatalf("loaded: %+v", cfg.Cluster)
	}
}

func TestClusterInvalid(t *testing.T) {
	for _, tc := range []struct{ cluster, want string }{
		{"{instance: lb-1}", "cluster.etcd.endpoints: at least one etcd endpoint"},
		{"{etcd: {endpoints: [127.0.0.1:2379]}}", `cluster.etcd.endpoints[0]: must be a URL such as http://127.0.0.1:2379, got "127.0.0.1:2379"`},
		{"{etcd: {endpoints: [ftp://127.0.0.1:2379]}}", "must be http:// or https://"},
		{"{etcd: {endpoints: [http://127.0.0.1]}}", "needs a host and a port"},
		{"{etcd: {endpoints: [http://127.0.0.1:99999]}}", "needs a port 1-65535"},
		{"{etcd: {endpoints: [http://127.0.0.1:2379/v3]}}", "must be a URL such as"},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], prefix: baton}}", `cluster.etcd.prefix: must start and end with /`},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], prefix: /baton}}", `cluster.etcd.prefix: must start and end with /`},
		{"{instance: 'lb 1', etcd: {endpoints: [http://127.0.0.1:2379]}}", `cluster.instance: must be letters`},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], tls: {cert: c.pem}}}", "cluster.etcd.tls: cert and key go together"},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], tls: {ca: /nonexistent/ca.pem}}}", "cluster.etcd.tls.ca: cannot be read"},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], username: baton}}", "cluster.etcd.password_file: is required with username"},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], password_file: p}}", "cluster.etcd.username: is required with password_file"},
		{"{etcd: {endpoints: [http://127.0.0.1:2379], dial_timeout: -1s}}", "cluster.etcd.dial_timeout: must be a positive duration"},
		{"{etcd: {endpoint: [http://127.0.0.1:2379]}}", "endpoint"},
	} {
		_, err := parse(t, "cluster: "+tc.cluster+clusterPools)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("cluster %s: want an error with %q, got %v", tc.cluster, tc.want, err)
		}
	}
}
