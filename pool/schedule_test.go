package pool

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func schedMembers(n int) []*Backend {
	out := make([]*Backend, n)
	for i := range out {
		out[i] = &Backend{name: fmt.Sprintf("m%d", i)}
	}
	return out
}

func schedCounts(members []*Backend, sched []*Backend) []int {
	idx := make(map[*Backend]int, len(members))
	for i, m := range members {
		idx[m] = i
	}
	c := make([]int, len(members))
	for _, b := range sched {
		i, ok := idx[b]
		if !ok {
			panic("schedule holds a backend that is not a member")
		}
		c[i]++
	}
	return c
}

func schedGCD(ws []int) int {
	g := 0
	for _, w := range ws {
		if w > 0 {
			g = gcd(g, w)
		}
	}
	return g
}

// schedBursts returns the windows of the cyclic schedule in which a member
// gets more turns than its exact share rounded up plus one: for window length
// L, more than ceil(L·w/T)+1. An evenly spread schedule has none.
func schedBursts(members []*Backend, weights []int, sched []*Backend) []string {
	g := schedGCD(weights)
	total := len(sched)
	var out []string
	for i, m := range members {
		w := weights[i]
		if w <= 0 {
			continue
		}
		w /= g
		// prefix[k] = turns of m in sched[0:k], over two cycles for wrap-around.
		prefix := make([]int, 2*total+1)
		for k := range 2 * total {
			prefix[k+1] = prefix[k]
			if sched[k%total] == m {
				prefix[k+1]++
			}
		}
		excess, wl, ws, wg := 0, 0, 0, 0 // the worst window: excess turns, length, start, turns
		for L := 1; L <= total; L++ {
			limit := (L*w+total-1)/total + 1 // ceil(L·w/T) + 1
			for s := range total {
				if got := prefix[s+L] - prefix[s]; got-limit > excess {
					excess, wl, ws, wg = got-limit, L, s, got
				}
			}
		}
		if excess > 0 {
			out = append(out, fmt.Sprintf("member %d (weight %d) has %d turns in the %d entries from %d, more than %d",
				i, weights[i], wg, wl, ws, wg-excess))
		}
	}
	return out
}

func TestScheduleExactWeightsAfterGCD(t *testing.T) {
	cases := [][]int{
		{1},
		{100},
		{1, 2, 7},
		{10, 20, 70},
		{100, 100, 100},
		{300, 200, 100},
		{3, 5},
		{999, 1000},
		{1, 1000},
		{6, 10, 15},
		{7, 7, 7, 7, 7, 7, 7, 14},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 40 {
		n := 1 + rng.IntN(8)
		ws := make([]int, n)
		for i := range ws {
			ws[i] = 1 + rng.IntN(1000)
		}
		cases = append(cases, ws)
	}
	for _, ws := range cases {
		ms := schedMembers(len(ws))
		sched := buildSchedule(ms, ws)
		g := schedGCD(ws)
		want := 0
		for _, w := range ws {
			want += w / g
		}
		if len(sched) != want {
			t.Fatalf("weights %v: schedule has %d entries, want %d (sum of weights / gcd %d)", ws, len(sched), want, g)
		}
		for i, c := range schedCounts(ms, sched) {
			if c != ws[i]/g {
				t.Fatalf("weights %v: member %d appears %d times per cycle, want %d", ws, i, c, ws[i]/g)
			}
		}
	}
}

func TestScheduleSpreadsTurnsEvenly(t *testing.T) {
	cases := [][]int{
		{1, 2, 7},
		{1, 1, 1},
		{1, 9},
		{2, 3},
		{5, 3, 2},
		{5, 1, 1},
		{1, 2, 3, 4, 5},
		{13, 17, 19, 23},
		{100, 1},
		{2, 2, 2, 3},
		// Several members sharing a light weight next to a heavy one: five
		// backends at the default 100 and one at 500, a 10:1:1:1 split.
		{100, 100, 100, 100, 100, 500},
		{10, 1, 1, 1},
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		n := 2 + rng.IntN(5)
		ws := make([]int, n)
		for i := range ws {
			ws[i] = 1 + rng.IntN(60)
		}
		cases = append(cases, ws)
	}
	for _, ws := range cases {
		ms := schedMembers(len(ws))
		sched := buildSchedule(ms, ws)
		if bursts := schedBursts(ms, ws, sched); len(bursts) > 0 {
			seq := ""
			if len(sched) <= 40 {
				seq = fmt.Sprintf(" (cycle %v)", schedNames(sched))
			}
			t.Errorf("weights %v are not spread evenly%s: %v", ws, seq, bursts)
		}
	}
}

func schedNames(s []*Backend) []string {
	out := make([]string, len(s))
	for i, b := range s {
		out[i] = b.name
	}
	return out
}

func TestScheduleZeroWeights(t *testing.T) {
	ms := schedMembers(5)
	sched := buildSchedule(ms, []int{0, 3, 0, 1, -2})
	c := schedCounts(ms, sched)
	if len(sched) != 4 || c[0] != 0 || c[1] != 3 || c[2] != 0 || c[3] != 1 || c[4] != 0 {
		t.Fatalf("weights 0,3,0,1,-2: counts %v over %d entries, want [0 3 0 1 0] over 4", c, len(sched))
	}
	if s := buildSchedule(ms[:3], []int{0, 0, 0}); len(s) != 0 {
		t.Fatalf("all weights 0: schedule %v, want empty", schedNames(s))
	}
	if s := buildSchedule(nil, nil); len(s) != 0 {
		t.Fatalf("no members: schedule of %d", len(s))
	}
	// A zero weight does not change the others' gcd reduction.
	sched = buildSchedule(ms[:3], []int{0, 200, 400})
	if c := schedCounts(ms[:3], sched); len(sched) != 3 || c[1] != 1 || c[2] != 2 {
		t.Fatalf("weights 0,200,400: counts %v over %d entries, want [0 1 2]", c, len(sched))
	}
}

func TestScheduleLargeTotalsAreScaled(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{100, 150, 400} {
		ws := make([]int, n)
		sum := 0
		for i := range ws {
			ws[i] = 500 + rng.IntN(501)
			sum += ws[i]
		}
		if g := schedGCD(ws); sum/g <= maxSchedule {
			t.Fatalf("test weights do not exceed the schedule bound (%d/%d)", sum, g)
		}
		ms := schedMembers(n)
		sched := buildSchedule(ms, ws)
		if len(sched) > 1<<16 {
			t.Fatalf("%d members, total weight %d: schedule has %d entries, want at most %d", n, sum, len(sched), 1<<16)
		}
		if len(sched) < (1<<16)*9/10 {
			t.Errorf("%d members: schedule shrank to %d entries; scaling lost too much", n, len(sched))
		}
		for i, c := range schedCounts(ms, sched) {
			want := float64(ws[i]) / float64(sum)
			got := float64(c) / float64(len(sched))
			if math.Abs(got-want) > 0.01*want {
				t.Fatalf("%d members: member %d (weight %d) has share %.6f, want %.6f ±1 %%", n, i, ws[i], got, want)
			}
		}
	}

	// A member whose share rounds to nothing keeps at least one turn.
	ms := schedMembers(3)
	sched := buildSchedule(ms, []int{70000, 69997, 1})
	c := schedCounts(ms, sched)
	if len(sched) > 1<<16 || c[2] < 1 {
		t.Fatalf("weights 70000,69997,1: %d entries, counts %v; want at most %d and the light member present", len(sched), c, 1<<16)
	}
	if r := float64(c[0]) / float64(c[1]); math.Abs(r-70000.0/69997.0) > 0.01 {
		t.Fatalf("weights 70000:69997 scaled to %d:%d", c[0], c[1])
	}
}
