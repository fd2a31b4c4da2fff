package control

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/baton-lb/baton/cluster"
)

// AffinityKey signs affinity cookies. The newest signs; every key kept
// verifies, so cookies signed before a rotation keep their version.
type AffinityKey struct {
	ID      byte      `json:"id"`
	Secret  []byte    `json:"secret"`
	Created time.Time `json:"created"`
}

// keyFile is the affinity keys' file format.
type keyFile struct {
	Format int           `json:"format"`
	Keys   []AffinityKey `json:"keys"` // newest first
}

const (
	keyFileFormat = 1
	// keysKept: the signing key and the one before it.
	keysKept = 2
	// minKeyAge: keys rotate daily at most, and never sooner than the
	// longest affinity.max_age, so the previous key outlives every cookie
	// it signed.
	minKeyAge = 24 * time.Hour
)

// KeysPath returns where the affinity keys of a state file are kept:
// beside it (baton.state.json → baton.keys.json). "" for none.
func KeysPath(stateFile string) string {
	a := AuditPath(stateFile)
	if a == "" {
		return ""
	}
	return strings.TrimSuffix(a, ".audit.jsonl") + ".keys.json"
}

// keyRotation is how old the signing key may get before a new one signs.
func (r *Registry) keyRotation() time.Duration {
	age := minKeyAge
	for _, pc := range r.cfg.Pools {
		age = max(age, pc.Affinity.MaxAge)
	}
	return age
}

// AffinityKeys returns the keys of affinity cookies, newest first: read
// from the key file beside the state file, made on first use, and rotated
// when the newest is older than a day (or the longest affinity.max_age) —
// except while frozen for a handover, when the file is only read. Without
// a state file the keys live in this process only (nil: the caller keeps
// its own). In a cluster the keys are the cluster's, kept in etcd, so a
// cookie one instance signed holds on every other; the key file is the
// local copy a restart starts from while etcd is away.
func (r *Registry) AffinityKeys(now time.Time) ([]AffinityKey, error) {
	path := KeysPath(r.stateFile)
	if r.shared != nil {
		return r.sharedAffinityKeys(now, path)
	}
	if path == "" {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	kf, err := readKeyFile(path, now)
	if err != nil {
		return nil, err
	}
	if r.frozen.Load() || !r.rotationDueLocked(kf, now) {
		return kf.Keys, nil
	}
	next, err := nextKeys(kf, now)
	if err != nil {
		return nil, err
	}
	if err := writeKeyFile(path, next); err != nil {
		return nil, err
	}
	r.log.Info().Str("file", path).Int("key", int(next.Keys[0].ID)).Msg("affinity cookies are signed with a new key; the previous one still verifies")
	return next.Keys, nil
}

func (r *Registry) rotationDueLocked(kf keyFile, now time.Time) bool {
	return len(kf.Keys) == 0 || now.Sub(kf.Keys[0].Created) >= r.keyRotation()
}

// sharedAffinityKeys returns the cluster's affinity keys from etcd. The
// first instance there brings its key file's (or a new key), as does one
// that finds keys no baton would write; whoever finds the newest too old
// rotates it; each such write compares the revision, and on a conflict the
// keys written first are taken. While etcd cannot be read, or during a
// handover, nothing is written and the local copy serves.
func (r *Registry) sharedAffinityKeys(now time.Time, path string) ([]AffinityKey, error) {
	store := r.shared.store
	const what = "the cluster's affinity keys in etcd"
	data, rev, err := store.Get(context.Background(), "affinity-keys")
	if err != nil {
		r.log.Warn().Err(err).Msg("the cluster's affinity keys cannot be read from etcd; signing with this instance's copy until they can")
		kf, err := r.localKeys(path, now)
		return kf.Keys, err
	}
	var kf keyFile
	write := data == nil // the first instance's keys become the cluster's
	if data != nil {
		if kf, err = decodeKeys(data, now, what); err != nil {
			r.log.Error().Err(err).Msg("the cluster's affinity keys in etcd are unusable; replacing them with this instance's")
			write = true
		}
	}
	if write {
		if kf, err = r.localKeys(path, now); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	frozen := r.frozen.Load()
	rotate := !frozen && r.rotationDueLocked(kf, now)
	r.mu.Unlock()
	if rotate {
		if kf, err = nextKeys(kf, now); err != nil {
			return nil, err
		}
	}
	if (write || rotate) && !frozen {
		kf = r.swapKeys(kf, rev, rotate, now)
	}
	if path != "" && len(kf.Keys) > 0 {
		r.mu.Lock()
		defer r.mu.Unlock()
		if cur, err := readKeyFile(path, now); err != nil || !reflect.DeepEqual(cur.Keys, kf.Keys) {
			if err := writeKeyFile(path, kf); err != nil {
				r.log.Warn().Err(err).Msg("could not keep a local copy of the cluster's affinity keys")
			}
		}
	}
	return kf.Keys, nil
}

// localKeys reads this instance's key file (none without a state file).
func (r *Registry) localKeys(path string, now time.Time) (keyFile, error) {
	if path == "" {
		return keyFile{}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return readKeyFile(path, now)
}

// swapKeys writes kf as the cluster's keys if they are still at rev and
// returns the keys in force: kf, or those another instance wrote first; kf
// too when etcd refuses (it signs here until the next try).
func (r *Registry) swapKeys(kf keyFile, rev int64, rotated bool, now time.Time) keyFile {
	enc, err := json.Marshal(kf)
	if err == nil {
		_, err = r.shared.store.Swap(context.Background(), "affinity-keys", enc, rev)
	}
	var c *cluster.Conflict
	switch {
	case errors.As(err, &c):
		if cur, err := decodeKeys(c.Current, now, "the cluster's affinity keys in etcd"); err == nil {
			return cur // another instance was first: its keys
		}
		r.log.Error().Msg("another instance wrote unusable affinity keys to etcd; signing with this instance's until the next check")
	case err != nil:
		r.log.Warn().Err(err).Msg("could not write the cluster's affinity keys to etcd; signing with this instance's until the next check")
	case rotated:
		r.log.Info().Int("key", int(kf.Keys[0].ID)).Msg("affinity cookies are signed with a new key, for every instance of the cluster; the previous one still verifies")
	}
	return kf
}

// readKeyFile reads the key file at path (none: no keys).
func readKeyFile(path string, now time.Time) (keyFile, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return keyFile{}, nil
	case err != nil:
		return keyFile{}, fmt.Errorf("reading the affinity keys: %w", err)
	}
	return decodeKeys(data, now, "the affinity keys "+path)
}

// decodeKeys reads a key file's content, from what (for errors).
func decodeKeys(data []byte, now time.Time, what string) (keyFile, error) {
	var kf keyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return keyFile{}, fmt.Errorf("reading %s: %w (delete it to start with a new key: clients are re-split once)", what, err)
	}
	if kf.Format > keyFileFormat {
		return keyFile{}, fmt.Errorf("%s are of format %d; this baton reads up to %d", what, kf.Format, keyFileFormat)
	}
	if len(kf.Keys) > keysKept {
		return keyFile{}, fmt.Errorf("%s hold %d keys; a baton keeps %d (delete it to start with a new key: clients are re-split once)", what, len(kf.Keys), keysKept)
	}
	seen := map[byte]bool{}
	for i, k := range kf.Keys {
		if seen[k.ID] {
			return keyFile{}, fmt.Errorf("%s: key %d repeats the id %d (delete it to start with a new key: clients are re-split once)", what, i, k.ID)
		}
		seen[k.ID] = true
		// An empty secret would let anyone sign cookies; a date ahead
		// would stop rotation.
		if len(k.Secret) != 32 || k.Created.After(now.Add(time.Hour)) {
			return keyFile{}, fmt.Errorf("%s: key %d has a %d-byte secret or a creation date ahead (%s); want 32 bytes (delete it to start with a new key: clients are re-split once)",
				what, i, len(k.Secret), k.Created.Format(time.RFC3339))
		}
	}
	return kf, nil
}

// nextKeys returns kf with a new signing key, made at now, in front.
func nextKeys(kf keyFile, now time.Time) (keyFile, error) {
	k := AffinityKey{Secret: make([]byte, 32), Created: now.UTC()}
	if _, err := rand.Read(k.Secret); err != nil {
		return keyFile{}, err
	}
	if len(kf.Keys) > 0 {
		k.ID = kf.Keys[0].ID + 1
	}
	return keyFile{Format: keyFileFormat, Keys: append([]AffinityKey{k}, kf.Keys[:min(len(kf.Keys), keysKept-1)]...)}, nil
}

// writeKeyFile writes kf to path, readable by baton's user alone.
func writeKeyFile(path string, kf keyFile) error {
	out, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("writing the affinity keys: %w", err)
	}
	return writeAtomic(path, append(out, '\n'), "the affinity keys")
}
