package control

import "github.com/baton-lb/baton/canary"

// JudgeActs has the judge act on pool's canary as if it had judged
// version cv at weight with verdict, reading held as it then was: a
// verdict that a decision overtook.
func (r *Registry) JudgeActs(poolName, cv string, weight float64, verdict string, held bool) {
	p := r.Pool(poolName)
	r.act(p, p.Settings(), cv, weight, canary.Result{Verdict: verdict, Reason: "a verdict of the test"}, held)
}
