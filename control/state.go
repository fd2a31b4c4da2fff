package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

// State is the runtime overlay: decisions made by operators (and the judge)
// on top of the config file. It is persisted to the state file before a
// decision is acknowledged, read back at start, and re-applied after every
// reload. Where it sets a field it wins over the file.
type State struct {
	Format int
	Pools  map[string]*PoolState
}

const stateFormat = 1

// PoolState is the overlay of one pool.
type PoolState struct {
	StableVersion string
	// Canary, when set, replaces the file's canary; an empty version means
	// no canary (after a promotion or rollback).
	Canary   *CanaryState
	Held     bool
	Backends map[string]*BackendState
	// LastCanary is how the pool's last canary was promoted or rolled
	// back, and why: a record, not an override.
	LastCanary *PreviousCanary
	// Lease is the running release's lock (see Lease).
	Lease *Lease
	// Switch is a blue/green switch being watched; LastSwitch how the last
	// one ended.
	Switch     *SwitchState
	LastSwitch *SwitchOutcome
	// Rollout is the pool's last release by baton rollout: the version
	// it replaces and the migration gates it ran (a record, not an
	// override).
	Rollout *RolloutRecord
	// Retired are the versions a rollout's after_gone gate retired, and
	// when: no backend of one is put in rotation again (version_retired)
	// until a rollout to it begins. It is a decision, shared in a cluster
	// and kept across restarts, so that nothing brings back a version
	// whose database columns are being dropped.
	Retired map[string]time.Time

	// What the file said when the overrides above were made. When the file
	// later says something else, someone edited it on purpose: the file wins
	// and the override is dropped.
	FileStable string
	FileCanary *CanaryState
}

// CanaryState is a canary version and share set at runtime.
type CanaryState struct {
	Version string
	Weight  float64
}

// BackendState is the overlay of one backend.
type BackendState struct {
	// State is the admin state a decision set (Active: none).
	State   pool.State
	Weight  *int
	Version string
	Address string
	// Added marks a backend added at runtime, not listed in the file.
	Added bool
	// Removed marks a backend removed at runtime, even one the file lists.
	Removed bool

	// The file's values when the overrides were made (see PoolState).
	FileWeight  *int
	FileVersion string
	FileAddress string
}

func (s *State) pool(name string) *PoolState {
	if s.Pools == nil {
		s.Pools = map[string]*PoolState{}
	}
	ps := s.Pools[name]
	if ps == nil {
		ps = &PoolState{}
		s.Pools[name] = ps
	}
	return ps
}

func (ps *PoolState) backend(name string) *BackendState {
	if ps.Backends == nil {
		ps.Backends = map[string]*BackendState{}
	}
	bs := ps.Backends[name]
	if bs == nil {
		bs = &BackendState{}
		ps.Backends[name] = bs
	}
	return bs
}

// clone returns a deep copy, so a change can be prepared, persisted, and only
// then made current.
func (s *State) clone() *State {
	c := &State{Format: s.Format, Pools: map[string]*PoolState{}}
	for name, ps := range s.Pools {
		c.Pools[name] = ps.clone()
	}
	return c
}

func (ps *PoolState) clone() *PoolState {
	cp := &PoolState{StableVersion: ps.StableVersion, Held: ps.Held, FileStable: ps.FileStable,
		LastCanary: ps.LastCanary} // a record, never changed once made
	if ps.Lease != nil {
		l := *ps.Lease
		cp.Lease = &l
	}
	cp.Switch, cp.LastSwitch = ps.Switch, ps.LastSwitch // replaced, never changed in place
	cp.Rollout = ps.Rollout.clone()
	if len(ps.Retired) > 0 {
		cp.Retired = make(map[string]time.Time, len(ps.Retired))
		for v, at := range ps.Retired {
			cp.Retired[v] = at
		}
	}
	if ps.Canary != nil {
		cc := *ps.Canary
		cp.Canary = &cc
	}
	if ps.FileCanary != nil {
		cc := *ps.FileCanary
		cp.FileCanary = &cc
	}
	if len(ps.Backends) > 0 {
		cp.Backends = map[string]*BackendState{}
		for bn, bs := range ps.Backends {
			cp.Backends[bn] = bs.clone()
		}
	}
	return cp
}

func (bs *BackendState) clone() *BackendState {
	cb := *bs
	if bs.Weight != nil {
		w := *bs.Weight
		cb.Weight = &w
	}
	if bs.FileWeight != nil {
		w := *bs.FileWeight
		cb.FileWeight = &w
	}
	return &cb
}

// compact drops empty entries.
func (s *State) compact() {
	now := time.Now()
	for name, ps := range s.Pools {
		if ps.Lease != nil && !now.Before(ps.Lease.Expires) {
			ps.Lease = nil // ran out
		}
		for bn, bs := range ps.Backends {
			if bs.State == pool.Active && bs.Weight == nil && bs.Version == "" && bs.Address == "" && !bs.Added && !bs.Removed {
				delete(ps.Backends, bn) // nothing overridden: bases alone mean nothing
				continue
			}
			if bs.Added && bs.Removed {
				delete(ps.Backends, bn)
			}
		}
		if ps.StableVersion == "" && ps.Canary == nil && !ps.Held && len(ps.Backends) == 0 && ps.LastCanary == nil && ps.Lease == nil &&
			ps.Switch == nil && ps.LastSwitch == nil && ps.Rollout == nil && len(ps.Retired) == 0 {
			delete(s.Pools, name)
		}
	}
}

// ErrCorruptState is returned when the state file exists but cannot be used.
// baton then refuses to start rather than silently forgetting decisions.
var ErrCorruptState = errors.New("state file is unreadable or corrupt")

// ReadStateFile reads a state file the way baton does when it starts: the
// decisions in force, and a warning naming fields a newer baton added that
// this one does not know (empty when none).
func ReadStateFile(path string) (*State, string, error) { return loadState(path) }

// loadState reads the state file. A missing file is an empty state; an
// unreadable or malformed one is an error naming the file. Fields this
// baton does not know (a newer baton added them within the same format)
// are ignored, and said in the warning returned; a newer format is refused.
func loadState(path string) (*State, string, error) {
	s, _, warning, err := loadStateAt(path)
	return s, warning, err
}

// loadStateAt is loadState that also returns the cluster revision the file
// is a copy of (see stateRecord.ClusterRevision).
func loadStateAt(path string) (*State, int64, string, error) {
	s := &State{Format: stateFormat}
	if path == "" {
		return s, 0, "", nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, 0, "", nil
	}
	if err != nil {
		return nil, 0, "", fmt.Errorf("%w: %s: %v", ErrCorruptState, path, err)
	}
	s, warning, err := decodeState(data, stateSource{name: path, err: ErrCorruptState, hint: fixHint})
	if err != nil {
		return nil, 0, "", err
	}
	var rec struct {
		Rev int64 `json:"cluster_revision"`
	}
	_ = json.Unmarshal(data, &rec) // decoded once already
	return s, rec.Rev, warning, nil
}

// encodeState is the state as the state file and etcd hold it.
func encodeState(s *State) ([]byte, error) {
	data, err := json.MarshalIndent(s.record(), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// stateSource is where a state is read from, for errors: the state file,
// or the cluster's key in etcd.
type stateSource struct {
	name string // the file, or the key
	err  error  // the sentinel errors wrap
	hint string // what an operator can do about one that cannot be used
}

// sharedSource is the cluster's desired state under prefix.
func sharedSource(prefix string) stateSource {
	return stateSource{name: "etcd key " + prefix + "state", err: ErrSharedStateUnusable, hint: clusterFixHint}
}

// ErrSharedStateUnusable: the cluster's desired state in etcd cannot be
// read by this baton. It serves on with the last state it applied.
var ErrSharedStateUnusable = errors.New("the cluster's shared state cannot be used by this baton")

// decodeState reads a state written by encodeState from src.
func decodeState(data []byte, src stateSource) (*State, string, error) {
	path, hint := src.name, src.hint
	var rec stateRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&rec); err != nil {
		return nil, "", fmt.Errorf("%w: %s%s: %v (%s)", src.err, path, where(data, err, dec), err, hint)
	}
	end := dec.InputOffset()
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		for end < int64(len(data)) && strings.ContainsRune(" \t\r\n", rune(data[end])) {
			end++
		}
		return nil, "", fmt.Errorf("%w: %s%s: data after the state object (%s)", src.err, path, at(data, end), hint)
	}
	switch {
	case rec.Format > stateFormat:
		return nil, "", fmt.Errorf("%w: %s is of format %d, written by a newer baton; this one reads format %d (run the newer baton; or %s)",
			src.err, path, rec.Format, stateFormat, hint)
	case rec.Format != stateFormat:
		return nil, "", fmt.Errorf("%w: %s: format %d, this baton reads format %d (%s)", src.err, path, rec.Format, stateFormat, hint)
	}
	warning := unknownFields(data)
	if warning != "" {
		warning = fmt.Sprintf("the state file %s has %s, which this baton does not know (a newer baton wrote it?): ignored, and gone from the file at its next write", path, warning)
	}
	for pn, pr := range rec.Pools {
		for bn, br := range pr.backends() {
			if _, ok := pool.ParseState(br.State); !ok || br.State == "active" {
				return nil, "", fmt.Errorf("%w: %s: backend %q of pool %q has state %q (%s)", src.err, path, bn, pn, br.State, hint)
			}
		}
	}
	s := rec.state()
	for pn, ps := range s.Pools {
		if ps == nil {
			return nil, "", fmt.Errorf("%w: %s: pool %q has no entry (%s)", src.err, path, pn, hint)
		}
		for bn, bs := range ps.Backends {
			if bs == nil {
				return nil, "", fmt.Errorf("%w: %s: backend %q of pool %q has no entry (%s)", src.err, path, bn, pn, hint)
			}
			bad := ""
			switch {
			case bs.Weight != nil && (*bs.Weight < 0 || *bs.Weight > config.MaxWeight):
				bad = fmt.Sprintf("weight %d", *bs.Weight)
			case bs.Version != "" && !config.ValidName(bs.Version):
				bad = fmt.Sprintf("version %q", bs.Version)
			case bs.Address != "" && config.CheckBackendAddress(bs.Address) != "":
				bad = fmt.Sprintf("address %q", bs.Address)
			case bs.Added && bs.Address == "":
				bad = "no address for a backend added at runtime"
			}
			if bad != "" {
				return nil, "", fmt.Errorf("%w: %s: backend %q of pool %q has %s (%s)", src.err, path, bn, pn, bad, hint)
			}
		}
		if c := ps.Canary; c != nil && (!(c.Weight >= 0 && c.Weight <= 100) || (c.Version != "" && !config.ValidName(c.Version))) {
			return nil, "", fmt.Errorf("%w: %s: pool %q has canary %q at %g%% (%s)", src.err, path, pn, c.Version, c.Weight, hint)
		}
	}
	return s, warning, nil
}

// unknownFields names the fields of data that the state file's records
// do not have, as paths ("pools.shop.rollout"), at most five; "" for none.
func unknownFields(data []byte) string {
	var v any
	if json.Unmarshal(data, &v) != nil {
		return ""
	}
	var found []string
	walkUnknown(v, reflect.TypeOf(stateRecord{}), "", &found)
	if len(found) == 0 {
		return ""
	}
	more := ""
	if len(found) > 5 {
		found, more = found[:5], " and more"
	}
	return "the fields " + strings.Join(found, ", ") + more
}

// walkUnknown adds to found the keys of v, a decoded JSON value, that t
// (the record type it decodes into) does not have.
func walkUnknown(v any, t reflect.Type, path string, found *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fields[name] = f.Type
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				*found = append(*found, strings.TrimPrefix(path+"."+k, "."))
				continue
			}
			walkUnknown(obj[k], ft, path+"."+k, found)
		}
	case reflect.Map:
		if obj, ok := v.(map[string]any); ok {
			keys := make([]string, 0, len(obj))
			for k := range obj {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walkUnknown(obj[k], t.Elem(), path+"."+k, found)
			}
		}
	case reflect.Slice:
		if list, ok := v.([]any); ok {
			for i, e := range list {
				walkUnknown(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), found)
			}
		}
	}
}

// fixHint says what an operator can do about a corrupt state file.
const fixHint = "fix the file, or start with baton serve --state-recover to move it aside and start from the config alone"

// clusterFixHint says what an operator can do about a shared state in
// etcd that this baton cannot use. Not --state-recover: that moves the
// local state file aside, which is not what is wrong.
const clusterFixHint = "overwrite it with this instance's state: baton ctl cluster reset-state (POST /v1/cluster/reset-state)"

// where returns " (line L, column C)" for a JSON error in data.
func where(data []byte, err error, dec *json.Decoder) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return at(data, se.Offset-1) // Offset counts the bytes read, the bad one included
	case errors.As(err, &te):
		return at(data, te.Offset-1)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return at(data, int64(len(data)))
	}
	return at(data, dec.InputOffset())
}

// at returns " (line L, column C)" for the byte at index i of data (i ==
// len(data): just after its end).
func at(data []byte, i int64) string {
	i = min(max(i, 0), int64(len(data)))
	line := 1 + bytes.Count(data[:i], []byte("\n"))
	col := i - int64(bytes.LastIndexByte(data[:i], '\n'))
	return fmt.Sprintf(" (line %d, column %d)", line, col)
}

// MoveAsideState renames a state file that cannot be used to
// NAME.corrupt-TIMESTAMP, so that baton can start from the config alone,
// and returns the new name. The file is kept for a person to look at.
func MoveAsideState(path string) (string, error) {
	dest := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, dest); err != nil {
		return "", fmt.Errorf("moving the corrupt state file aside: %w", err)
	}
	return dest, nil
}

// saveState writes the state atomically: a temporary file in the same
// directory, fsync, rename over the old one, fsync of the directory.
func saveState(path string, s *State) error { return saveStateAt(path, s, 0) }

// saveStateAt is saveState for a copy of the cluster's desired state at
// revision rev.
func saveStateAt(path string, s *State, rev int64) error {
	if path == "" {
		return nil
	}
	rec := s.record()
	rec.ClusterRevision = rev
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(data, '\n'), "state")
}

// writeAtomic writes data to path atomically: a temporary file in the same
// directory (mode 0600), fsync, rename over the old one, fsync of the
// directory. Errors start with "writing WHAT".
func writeAtomic(path string, data []byte, what string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", what, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this finds nothing
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", what, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", what, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", what, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", what, err)
	}
	// The rename is durable only once the directory is on disk: a decision
	// acknowledged before that could be lost by a power cut.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("writing %s: opening the directory to sync it: %w", what, err)
	}
	err = d.Sync()
	d.Close()
	if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		// (EINVAL, ENOTSUP: a file system that cannot sync a directory.)
		return fmt.Errorf("writing %s: syncing the directory: %w", what, err)
	}
	return nil
}

// desired is what a pool should be: the file's spec pc with the overlay ps
// on top — the configuration (effective) and each backend's admin state. A
// decision, a reload and a restart all reach the pool through it.
func desired(pc config.Pool, ps *PoolState) pool.Desired {
	d := pool.Desired{Config: effective(pc, ps)}
	if ps == nil {
		return d
	}
	for name, bs := range ps.Backends {
		if bs.Removed || bs.State == pool.Active {
			continue
		}
		if d.Admin == nil {
			d.Admin = make(map[string]pool.State)
		}
		d.Admin[name] = bs.State
	}
	// A retired version never comes back into rotation, whatever the
	// file says: its backends stay out (drained) until a rollout to it
	// clears the tombstone. A reload warns of them (retiredInFile).
	for _, b := range d.Config.Backends {
		if _, retired := ps.Retired[b.Version]; retired {
			if d.Admin == nil {
				d.Admin = make(map[string]pool.State)
			}
			d.Admin[b.Name] = pool.Drained
		}
	}
	return d
}

// retiredInFile names the backends of pc that run a version ps retired:
// desired keeps them out of rotation.
func retiredInFile(pc config.Pool, ps *PoolState) []string {
	if ps == nil || len(ps.Retired) == 0 {
		return nil
	}
	var out []string
	for _, b := range effective(pc, ps).Backends {
		if _, retired := ps.Retired[b.Version]; retired {
			out = append(out, b.Name+" ("+b.Version+")")
		}
	}
	return out
}

// effective returns the pool's configuration with the overlay applied:
// backends added at runtime, weight, version and address overrides, and the
// canary and stable version set at runtime.
func effective(pc config.Pool, ps *PoolState) config.Pool {
	if ps == nil {
		return pc
	}
	out := pc
	out.Backends = make([]config.Backend, 0, len(pc.Backends)+len(ps.Backends))
	seen := map[string]bool{}
	for _, b := range pc.Backends {
		seen[b.Name] = true
		if bs := ps.Backends[b.Name]; bs != nil {
			if bs.Removed {
				continue
			}
			b = bs.apply(b)
		}
		out.Backends = append(out.Backends, b)
	}
	var added []string
	for name, bs := range ps.Backends {
		if bs.Added && !bs.Removed && !seen[name] {
			added = append(added, name)
		}
	}
	sort.Strings(added)
	for _, name := range added {
		out.Backends = append(out.Backends, ps.Backends[name].apply(config.Backend{Name: name}))
	}
	if ps.StableVersion != "" {
		out.StableVersion = ps.StableVersion
	}
	if ps.Canary != nil {
		out.Canary.Version, out.Canary.Weight = ps.Canary.Version, ps.Canary.Weight
	}
	return out
}

func (bs *BackendState) apply(b config.Backend) config.Backend {
	if bs.Weight != nil {
		w := *bs.Weight
		b.Weight = &w
	}
	if bs.Version != "" {
		b.Version = bs.Version
	}
	if bs.Address != "" {
		b.Address = bs.Address
	}
	if b.Version == "" {
		b.Version = config.DefaultVersion
	}
	if b.Weight == nil {
		w := config.DefaultWeight
		b.Weight = &w
	}
	return b
}
