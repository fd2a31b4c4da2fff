package pool_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

func evidencePool(t *testing.T, canaryVersion string) config.Pool {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    canary: {version: %s, weight: 10}
    backends:
      - {name: a, address: "127.0.0.1:1", version: v1}
      - {name: b, address: "127.0.0.1:2", version: %s}
`, canaryVersion, canaryVersion)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Pools[0]
}

// TestEvidenceTablesStartAfreshWithEachCanary: the automatic route groups
// and the error signatures of one canary do not fill up the next one's;
// the previous signatures stay readable; what did not fit is counted, not
// silently folded; made-up methods share one signature.
func TestEvidenceTablesStartAfreshWithEachCanary(t *testing.T) {
	p := pool.New(evidencePool(t, "v2"), zerolog.Nop())
	defer p.Close()
	g := p.Groups()
	for i := range 20 {
		g.Index([]byte(fmt.Sprintf("/seg%d/x", i)))
	}
	if g.Folded() == 0 || g.Index([]byte("/another")) != canary.OtherGroup {
		t.Fatalf("20 segments into 16 groups: folded %d", g.Folded())
	}
	sigs := p.Signatures()
	for _, m := range []string{"GET", "BREW", "PROPFIND-X"} {
		sigs.Record("v2", &canary.Failure{Group: "/checkout", Method: m, Status: 500, Class: "server_error"}, time.Now(), canary.ClientKey{})
	}
	snap := sigs.Snapshot()
	if snap["OTHER /checkout 500 server_error"].Counts["v2"] != 2 || len(snap) != 2 {
		t.Errorf("made-up methods: signatures %v; want them in one OTHER signature", snap)
	}

	// The next canary.
	p.Configure(evidencePool(t, "v3"))
	if p.Groups() == g || p.Groups().Folded() != 0 || p.Groups().Index([]byte("/another")) == canary.OtherGroup {
		t.Errorf("a new canary kept the full route groups of the last one")
	}
	if p.Signatures() == sigs || len(p.Signatures().Snapshot()) != 0 {
		t.Errorf("a new canary kept the last one's signatures")
	}
	if p.PreviousSignatures() != sigs {
		t.Errorf("the previous canary's signatures are not readable")
	}
	// A weight change of the same canary keeps its evidence.
	cfg := evidencePool(t, "v3")
	cfg.Canary.Weight = 25
	cur := p.Signatures()
	p.Configure(cfg)
	if p.Signatures() != cur {
		t.Errorf("a new share of the same canary started its evidence afresh")
	}
}
