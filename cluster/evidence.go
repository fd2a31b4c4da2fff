package cluster

import (
	"context"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Evidence a baton gathered lives under evidence/SPACE/INSTANCE/PROCESS,
// one key per process and space — a space is one kind of evidence on one
// pool, such as canary/POOL or switch/POOL — without a lease: a process
// that died keeps its part in a release's evidence until the release ends.
// The judge leader's verdict on a pool's canary lives under verdicts/POOL.

func (s *Store) evidenceKey(space string) string { return s.key("evidence/" + space + "/") }

// PublishEvidence writes this process's evidence in space.
func (s *Store) PublishEvidence(ctx context.Context, process, space string, data []byte) error {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	if _, err := s.c.Put(ctx, s.evidenceKey(space)+s.instance+"/"+process, string(data)); err != nil {
		return unavailable(err)
	}
	return nil
}

// Evidence returns every process's evidence in space, by
// "INSTANCE/PROCESS".
func (s *Store) Evidence(ctx context.Context, space string) (map[string][]byte, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	k := s.evidenceKey(space)
	resp, err := s.c.Get(ctx, k, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	out := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), k)] = kv.Value
	}
	return out, nil
}

// ForgetEvidence deletes the evidence of the given processes
// ("INSTANCE/PROCESS") in space: evidence of a release that ended.
func (s *Store) ForgetEvidence(ctx context.Context, space string, who []string) error {
	if len(who) == 0 {
		return nil
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	ops := make([]clientv3.Op, 0, len(who))
	for _, w := range who {
		ops = append(ops, clientv3.OpDelete(s.evidenceKey(space)+w))
	}
	for len(ops) > 0 {
		n := min(len(ops), 64) // etcd bounds the operations of one transaction
		if _, err := s.c.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			return unavailable(err)
		}
		ops = ops[n:]
	}
	return nil
}

// PublishVerdict writes the judge leader's verdict on pool's canary.
func (s *Store) PublishVerdict(ctx context.Context, pool string, data []byte) error {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	if _, err := s.c.Put(ctx, s.key("verdicts/"+pool), string(data)); err != nil {
		return unavailable(err)
	}
	return nil
}

// Verdict returns the judge leader's last verdict on pool (nil: none).
func (s *Store) Verdict(ctx context.Context, pool string) ([]byte, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, s.key("verdicts/"+pool))
	if err != nil {
		return nil, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}
