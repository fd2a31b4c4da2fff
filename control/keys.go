package control

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
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
// its own).
func (r *Registry) AffinityKeys(now time.Time) ([]AffinityKey, error) {
	path := KeysPath(r.stateFile)
	if path == "" {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var kf keyFile
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading the affinity keys: %w", err)
	default:
		if err := json.Unmarshal(data, &kf); err != nil {
			return nil, fmt.Errorf("reading the affinity keys %s: %w (delete it to start with a new key: clients are re-split once)", path, err)
		}
		if kf.Format > keyFileFormat {
			return nil, fmt.Errorf("the affinity keys %s are of format %d; this baton reads up to %d", path, kf.Format, keyFileFormat)
		}
		for i, k := range kf.Keys {
			// An empty secret would let anyone sign cookies; a date ahead
			// would stop rotation.
			if len(k.Secret) != 32 || k.Created.After(now.Add(time.Hour)) {
				return nil, fmt.Errorf("the affinity keys %s: key %d has a %d-byte secret or a creation date ahead (%s); want 32 bytes (delete the file to start with a new key: clients are re-split once)",
					path, i, len(k.Secret), k.Created.Format(time.RFC3339))
			}
		}
	}
	if r.frozen.Load() {
		return kf.Keys, nil
	}
	if len(kf.Keys) > 0 && now.Sub(kf.Keys[0].Created) < r.keyRotation() {
		return kf.Keys, nil
	}
	k := AffinityKey{Secret: make([]byte, 32), Created: now.UTC()}
	if _, err := rand.Read(k.Secret); err != nil {
		return nil, err
	}
	if len(kf.Keys) > 0 {
		k.ID = kf.Keys[0].ID + 1
	}
	kf.Format = keyFileFormat
	kf.Keys = append([]AffinityKey{k}, kf.Keys[:min(len(kf.Keys), keysKept-1)]...)
	out, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("writing the affinity keys: %w", err)
	}
	if err := writeAtomic(path, append(out, '\n'), "the affinity keys"); err != nil {
		return nil, err
	}
	r.log.Info().Str("file", path).Int("key", int(k.ID)).Msg("affinity cookies are signed with a new key; the previous one still verifies")
	return kf.Keys, nil
}
