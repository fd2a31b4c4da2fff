package pool

// maxSchedule bounds a version's schedule length. Larger total weights are
// scaled down proportionally, which keeps ratios within rounding.
const maxSchedule = 1 << 16

// buildSchedule returns a sequence in which each member appears exactly its
// weight's times (after dividing all weights by their gcd), spread evenly:
// member i's k-th turn falls at (2k+1)/(2w_i) of the cycle, and turns are
// taken in that order (stride scheduling). Walking the sequence with a
// counter gives exact weighted ratios without a lock per pick; it is rebuilt
// only when membership, weights or availability change.
func buildSchedule(members []*Backend, weights []int) []*Backend {
	w := make([]int, 0, len(weights))
	m := make([]*Backend, 0, len(members))
	g, total := 0, 0
	for i, x := range weights {
		if x <= 0 {
			continue
		}
		w = append(w, x)
		m = append(m, members[i])
		g = gcd(g, x)
		total += x
	}
	if len(w) == 0 {
		return nil
	}
	total = 0
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

	// A binary min-heap of members ordered by their next turn (2k+1)/(2w),
	// compared exactly as fractions; ties go to the earlier member.
	turns := make([]int, len(w))
	heap := make([]int, len(w))
	for i := range heap {
		heap[i] = i
	}
	less := func(a, b int) bool {
		l := (2*turns[a] + 1) * w[b]
		r := (2*turns[b] + 1) * w[a]
		if l != r {
			return l < r
		}
		return a < b
	}
	down := func(i int) {
		n := len(heap)
		for {
			c := 2*i + 1
			if c >= n {
				return
			}
			if c+1 < n && less(heap[c+1], heap[c]) {
				c++
			}
			if !less(heap[c], heap[i]) {
				return
			}
			heap[i], heap[c] = heap[c], heap[i]
			i = c
		}
	}
	for i := len(heap)/2 - 1; i >= 0; i-- {
		down(i)
	}
	out := make([]*Backend, 0, total)
	for len(out) < total {
		top := heap[0]
		out = append(out, m[top])
		turns[top]++
		if turns[top] >= w[top] {
			heap[0] = heap[len(heap)-1]
			heap = heap[:len(heap)-1]
		}
		if len(heap) > 0 {
			down(0)
		}
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
