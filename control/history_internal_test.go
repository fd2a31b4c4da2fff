package control

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
)

// The history keeps 15 minutes and no more, however long baton runs.
func TestHistoryIsBounded(t *testing.T) {
	cfg, err := config.Parse([]byte(`listen: 127.0.0.1:0
admin: {listen: "off"}
pools:
  - name: shop
    backends:
      - {name: s1, address: "127.0.0.1:9", version: v1}
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, "", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Unix(1_800_000_000, 0)
	for i := range historyLen + 50 {
		r.sampleHistory(start.Add(time.Duration(i) * historyStep))
	}
	h, err := r.History("shop")
	if err != nil {
		t.Fatal(err)
	}
	if len(h.T) != historyLen {
		t.Fatalf("%d samples kept, want %d (15 minutes)", len(h.T), historyLen)
	}
	if first, last := h.T[0], h.T[len(h.T)-1]; last-first != int64((historyLen-1)*int(historyStep/time.Second)) {
		t.Errorf("samples from %d to %d; want the newest 15 minutes", first, last)
	}
	if _, err := r.History("nope"); err == nil {
		t.Errorf("History of an unknown pool: no error")
	}
}
