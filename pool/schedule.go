package pool

// maxSchedule bounds a version's schedule length. Larger total weights are
// scaled down proportionally, which keeps ratios within rounding.
const maxSchedule = 1 << 16

// buildSchedule returns a sequence in which each member appears exactly its
// weight's times (after dividing all weights by their gcd), spread evenly.
// It is nginx's smooth weighted round-robin run for one whole cycle: at each
// step every member gains its weight, the one with the most takes the turn
// and gives back the total. Walking the sequence with a counter then gives
// exact weighted ratios without a lock per pick; the sequence is rebuilt only
// when membership, weights or availability change.
func buildSchedule(members []*Backend, weights []int) []*Backend {
	w := make([]int, 0, len(weights))
	m := make([]*Backend, 0, len(members))
	g := 0
	for i, x := range weights {
		if x <= 0 {
			continue
		}
		w = append(w, x)
		m = append(m, members[i])
		g = gcd(g, x)
	}
	if len(w) == 0 {
		return nil
	}
	total := 0
	for i := range w {
		w[i] /= g
		total += w[i]
	}
	if total > maxSchedule {
		scaled := 0
		for i := range w {
			w[i] = max(1, w[i]*maxSchedule/total)
			scaled += w[i]
		}
		total = scaled
	}
	current := make([]int, len(w))
	out := make([]*Backend, 0, total)
	for range total {
		best := 0
		for i := range w {
			current[i] += w[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		out = append(out, m[best])
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
