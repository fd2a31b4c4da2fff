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

// sharedAffinityKeys returns the cluster's affinity keys from etcd: the
// first instance there brings its key file's (or a new key), whoever finds
// the newest too old rotates it in a compare-on-revision write, and the
// others take what was written. While etcd cannot be read the local copy
// serves, unrotated.
func (r *Registry) sharedAffinityKeys(now time.Time, path string) ([]AffinityKey, error) {
	store := r.shared.store
	data, rev, err := store.Get(context.Background(), "affinity-keys")
	if err != nil {
		r.log.Warn().Err(err).Msg("the cluster's affinity keys cannot be read from etcd; signing with this instance's copy until they can")
		if path == "" {
			return nil, nil
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		kf, err := readKeyFile(path, now)
		return kf.Keys, err
	}
	var kf keyFile
	unusable := false
	if data != nil {
		if kf, err = decodeKeys(data, now, "the cluster's affinity keys in etcd"); err != nil {
			unusable = true
			// Not keys any baton wrote: this instance's copy (or a new key)
			// replaces them, so that cookies keep working everywhere.
			r.log.Error().Err(err).Msg("the cluster's affinity keys in etcd are unusable; replacing them with this instance's")
			kf = keyFile{}
		}
	}
	if len(kf.Keys) == 0 && path != "" {
		r.mu.Lock()
		kf, err = readKeyFile(path, now) // this instance's become the cluster's
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	frozen := r.frozen.Load()
	due := !frozen && r.rotationDueLocked(kf, now)
	r.mu.Unlock()
	if unusable && !due && !frozen {
		// Write this instance's keys over the unusable ones.
		if enc, merr := json.Marshal(kf); merr == nil {
			if _, serr := store.Swap(context.Background(), "affinity-keys", enc, rev); serr != nil {
				r.log.Warn().Err(serr).Msg("could not replace the cluster's unusable affinity keys; signing with this instance's")
			}
		}
	}
	if due {
		next, err := nextKeys(kf, now)
		if err != nil {
			return nil, err
		}
		enc, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		_, err = store.Swap(context.Background(), "affinity-keys", enc, rev)
		var c *cluster.Conflict
		switch {
		case errors.As(err, &c): // another instance was first: its keys
			if kf, err = decodeKeys(c.Current, now, "the cluster's affinity keys in etcd"); err != nil {
				return nil, err
			}
		case err != nil:
			r.log.Warn().Err(err).Msg("could not write the cluster's new affinity key to etcd; signing with the current one")
		default:
			kf = next
			r.log.Info().Int("key", int(next.Keys[0].ID)).Msg("affinity cookies are signed with a new key, for every instance of the cluster; the previous one still verifies")
		}
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
