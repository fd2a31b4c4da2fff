package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/baton-lb/baton/config"
)

const stateFileBase = `pools:
  - name: web
    backends:
      - {name: a, address: "127.0.0.1:9001"}
`

// writeConfig writes text to dir/name (creating dir) and returns the path.
func writeConfig(t *testing.T, dir, name, text string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadStateFileDefaultsBesideTheConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "baton")
	cases := []struct{ file, state string }{
		{"baton.yaml", "baton.state.json"},
		{"baton.yml", "baton.state.json"},
		{"prod.baton.yaml", "prod.baton.state.json"},
		{"baton", "baton.state.json"},
	}
	for _, c := range cases {
		path := writeConfig(t, dir, c.file, stateFileBase)
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("Load %s: %v", c.file, err)
		}
		if want := filepath.Join(dir, c.state); cfg.StateFile != want {
			t.Errorf("Load %s: state_file %q, want %q (beside the config, named after it)", c.file, cfg.StateFile, want)
		}
	}
	// An explicit empty value is the default too.
	path := writeConfig(t, dir, "empty.yaml", "state_file: \"\"\n"+stateFileBase)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "empty.state.json"); cfg.StateFile != want {
		t.Errorf("state_file \"\": %q, want %q", cfg.StateFile, want)
	}
}

func TestLoadRelativeStateFileIsRelativeToTheConfig(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	cases := []struct{ value, want string }{
		{"decisions.json", filepath.Join(dir, "decisions.json")},
		{"state/decisions.json", filepath.Join(dir, "state", "decisions.json")},
		{"../var/baton.json", filepath.Join(root, "var", "baton.json")},
		{"./here.json", filepath.Join(dir, "here.json")},
	}
	// From a different working directory: the result must not depend on it.
	t.Chdir(t.TempDir())
	for _, c := range cases {
		path := writeConfig(t, dir, "baton.yaml", "state_file: "+c.value+"\n"+stateFileBase)
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("state_file %s: %v", c.value, err)
		}
		if cfg.StateFile != c.want {
			t.Errorf("state_file %s in %s: %q, want %q", c.value, path, cfg.StateFile, c.want)
		}
	}
}

// A config path relative to the working directory gives a state file
// relative to it too, beside the config.
func TestLoadRelativeConfigPath(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, filepath.Join(dir, "conf"), "baton.yaml", stateFileBase)
	writeConfig(t, filepath.Join(dir, "conf"), "rel.yaml", "state_file: s.json\n"+stateFileBase)
	t.Chdir(dir)
	cfg, err := config.Load(filepath.Join("conf", "baton.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join("conf", "baton.state.json"); cfg.StateFile != want {
		t.Errorf("Load conf/baton.yaml: state_file %q, want %q", cfg.StateFile, want)
	}
	cfg, err = config.Load(filepath.Join("conf", "rel.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join("conf", "s.json"); cfg.StateFile != want {
		t.Errorf("Load conf/rel.yaml with state_file s.json: %q, want %q", cfg.StateFile, want)
	}
}

func TestLoadAbsoluteStateFileStays(t *testing.T) {
	dir := t.TempDir()
	abs := filepath.Join(t.TempDir(), "elsewhere", "baton.state.json")
	path := writeConfig(t, dir, "baton.yaml", "state_file: "+abs+"\n"+stateFileBase)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateFile != abs {
		t.Errorf("absolute state_file: %q, want %q unchanged", cfg.StateFile, abs)
	}
}

func TestLoadStateFileOff(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"off", `"off"`} {
		path := writeConfig(t, dir, "baton.yaml", "state_file: "+v+"\n"+stateFileBase)
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.StateFile != "" {
			t.Errorf("state_file: %s: %q, want \"\" (memory only)", v, cfg.StateFile)
		}
	}
}

// Parse has no file path: it resolves nothing, and the default is no state
// file at all.
func TestParseLeavesStateFileUnresolved(t *testing.T) {
	cases := []struct{ line, want string }{
		{"", ""},
		{"state_file: \"\"\n", ""},
		{"state_file: off\n", ""},
		{"state_file: decisions.json\n", "decisions.json"},
		{"state_file: /var/lib/baton/state.json\n", "/var/lib/baton/state.json"},
	}
	for _, c := range cases {
		cfg, err := config.Parse([]byte(c.line+stateFileBase), "baton.yaml")
		if err != nil {
			t.Fatalf("Parse %q: %v", c.line, err)
		}
		if cfg.StateFile != c.want {
			t.Errorf("Parse with %q: state_file %q, want %q", c.line, cfg.StateFile, c.want)
		}
	}
}
