package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is one problem in a config file, with the YAML path of the key and
// the line it is on.
type Error struct {
	Path string // e.g. pools[0].backends[2].weight; empty for file-level problems
	Msg  string
	File string
	Line int
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Path == "" {
		return fmt.Sprintf("%s: %s", loc, e.Msg)
	}
	return fmt.Sprintf("%s: %s (%s)", e.Path, e.Msg, loc)
}

// Load reads, decodes, defaults and validates the file at path. On failure the
// error joins every problem found (see Errors).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := parse(data, filepath.Base(path), filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.StateFile == "" && cfg.stateFileSet:
		// "off"
	case cfg.StateFile == "":
		base := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		cfg.StateFile = filepath.Join(filepath.Dir(path), base+".state.json")
	case !filepath.IsAbs(cfg.StateFile):
		cfg.StateFile = filepath.Join(filepath.Dir(path), cfg.StateFile)
	}
	if cfg.Admin.TokenFile != "" && !filepath.IsAbs(cfg.Admin.TokenFile) {
		cfg.Admin.TokenFile = filepath.Join(filepath.Dir(path), cfg.Admin.TokenFile)
	}
	cfg.Warnings = append(cfg.Warnings, cfg.adminWarnings()...)
	return cfg, nil
}

// resolveForceSecrets makes relative secret files relative to dir.
func (c *Config) resolveForceSecrets(dir string) {
	for i := range c.Pools {
		a := &c.Pools[i].Affinity
		for _, f := range []*Force{&a.ForceHeader, &a.ForceCookie} {
			if f.SecretFile != "" && !filepath.IsAbs(f.SecretFile) && dir != "" {
				f.SecretFile = filepath.Join(dir, f.SecretFile)
			}
		}
	}
}

// loadForceSecrets reads the secrets of forced versions (validation has
// checked them).
func (c *Config) loadForceSecrets() {
	for i := range c.Pools {
		a := &c.Pools[i].Affinity
		for _, f := range []*Force{&a.ForceHeader, &a.ForceCookie} {
			if f.Name != "" && f.SecretFile != "" {
				f.Secret, _ = readForceSecret(f.SecretFile)
			}
		}
	}
}

// adminWarnings are what does not stop baton but weakens the admin API: a
// token file others can read, tokens sent in cleartext off loopback.
func (c *Config) adminWarnings() []string {
	if c.Admin.Listen == "off" {
		return nil
	}
	var out []string
	if f := c.Admin.TokenFile; f != "" {
		if st, err := os.Stat(f); err == nil && st.Mode().Perm()&0o077 != 0 {
			out = append(out, fmt.Sprintf("admin.token_file: %s can be read by other users (mode %04o); chmod 600 it", f, st.Mode().Perm()))
		}
	}
	if !loopback(c.Admin.Listen) && c.Admin.TLS == (Certificate{}) {
		out = append(out, fmt.Sprintf("admin.listen: %s is reachable from other hosts over plain HTTP, so tokens travel in cleartext; set admin.tls", c.Admin.Listen))
	}
	return out
}

// Parse is Load for bytes already read; name is used in error messages.
// Relative certificate paths are relative to the working directory.
func Parse(data []byte, name string) (*Config, error) { return parse(data, name, "") }

// parse decodes, defaults and validates; relative certificate paths are
// resolved against dir.
func parse(data []byte, name, dir string) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: name, Msg: "the file is empty; it needs at least one pool"}
		}
		return nil, yamlSyntaxError(err, name, data)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: name, Line: extra.Line, Msg: "a second YAML document (---) is not allowed; put everything in one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlSyntaxError(err, name, data)
	}

	cfg := &Config{}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	var errs []*Error
	if err := strict.Decode(cfg); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, yamlSyntaxError(err, name, data)
		}
		for _, msg := range te.Errors {
			errs = append(errs, decodeError(&root, msg, name))
		}
	}
	// Validate what did decode, so one typo does not hide the other
	// problems; a check on a key that failed to decode is left out, since
	// the decode error already names it.
	cfg.applyDefaults()
	cfg.resolveTLSPaths(dir)
	cfg.resolveForceSecrets(dir)
	cfg.Cluster.resolvePaths(dir)
	for _, e := range cfg.Validate() {
		var fe *Error
		if !errors.As(e, &fe) {
			continue
		}
		if coveredBy(fe.Path, errs) {
			continue
		}
		fe.File = name
		if fe.Line == 0 {
			fe.Line = lineOf(&root, fe.Path)
		}
		errs = append(errs, fe)
	}
	if len(errs) == 0 {
		cfg.loadForceSecrets()
		cfg.Cluster.readPassword()
		cfg.Warnings = cfg.tlsWarnings(time.Now())
		return cfg, nil
	}
	// In file order, as an editor shows them.
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
	joined := make([]error, len(errs))
	for i, e := range errs {
		joined[i] = e
	}
	return nil, errors.Join(joined...)
}

// coveredBy reports whether path is, or is under, the path of a decode error.
// A duplicate key makes yaml.v3 give up on its whole mapping, so it covers
// the mapping that holds it.
func coveredBy(path string, decodeErrs []*Error) bool {
	for _, d := range decodeErrs {
		cover := d.Path
		if strings.HasPrefix(d.Msg, "duplicate key") {
			cover = parentPath(cover)
		}
		if cover == "" {
			return true // the whole file
		}
		if path == cover || strings.HasPrefix(path, cover+".") || strings.HasPrefix(path, cover+"[") {
			return true
		}
	}
	return false
}

// parentPath drops the last key of a path: pools[0].name → pools[0].
func parentPath(p string) string {
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}

// Errors splits an error returned by Load or Parse into its problems.
func Errors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlSyntaxError turns a yaml.v3 syntax error into an Error on the right
// line. yaml.v3 numbers parser errors from 0 (and omits line 0), and points a
// misplaced tab at the construct that contains it, so both are corrected here.
func yamlSyntaxError(err error, name string, data []byte) error {
	text := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		text = m[2]
	}
	switch {
	case strings.HasPrefix(text, "did not find expected"):
		line++ // a parser error: 0-based
	case line == 0:
		line = 1
	}
	if strings.HasPrefix(text, "found character that cannot start any token") && tabIndented(data, line) {
		// yaml.v3's words for a tab before a list item.
		text = "a tab character in the indentation; indent with spaces"
	}
	if strings.HasPrefix(text, "found a tab character") {
		lines := strings.Split(string(data), "\n")
		for i := line - 1; i >= 0 && i < len(lines); i++ {
			indent := lines[i][:len(lines[i])-len(strings.TrimLeft(lines[i], " \t"))]
			if strings.Contains(indent, "\t") {
				line = i + 1
				break
			}
		}
	}
	return &Error{File: name, Line: line, Msg: "YAML syntax: " + text}
}

// tabIndented reports whether line (1-based) of data has a tab in its
// indentation.
func tabIndented(data []byte, line int) bool {
	lines := strings.Split(string(data), "\n")
	if line < 1 || line > len(lines) {
		return false
	}
	l := lines[line-1]
	return strings.Contains(l[:len(l)-len(strings.TrimLeft(l, " \t"))], "\t")
}

var (
	unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type`)
	dupKeyRE       = regexp.MustCompile(`^mapping key "(.+)" already defined at line (\d+)$`)
	cannotRE       = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
)

// decodeError turns one of yaml.v3's "line N: ..." messages into an Error
// carrying the key's path.
func decodeError(root *yaml.Node, msg, name string) *Error {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return &Error{File: name, Msg: msg}
	}
	line, _ := strconv.Atoi(m[1])
	text := m[2]
	if u := unknownFieldRE.FindStringSubmatch(text); u != nil {
		return &Error{File: name, Line: line, Path: pathAt(root, line, u[1], ""), Msg: "unknown key"}
	}
	if d := dupKeyRE.FindStringSubmatch(text); d != nil {
		return &Error{File: name, Line: line, Path: pathAt(root, line, d[1], ""), Msg: "duplicate key (first set on line " + d[2] + ")"}
	}
	if c := cannotRE.FindStringSubmatch(text); c != nil {
		got := "a mapping"
		switch {
		case c[1] == "seq":
			got = "a list"
		case c[1] != "map":
			got = fmt.Sprintf("%s %q", c[1], c[2])
		}
		path := pathAt(root, line, "", c[2])
		switch {
		case c[3] == "config.Config":
			path = "" // the whole file
		case c[1] == "seq" || c[1] == "map":
			path = pathOfNodeAt(root, line)
		}
		return &Error{File: name, Line: line, Path: path, Msg: fmt.Sprintf("must be %s, got %s", typeWord(c[3]), got)}
	}
	return &Error{File: name, Line: line, Path: pathAt(root, line, "", ""), Msg: text}
}

func typeWord(goType string) string {
	switch goType {
	case "time.Duration":
		return "a duration with a unit such as 500ms, 10s or 2m"
	case "int", "int64", "uint32":
		return "a whole number"
	case "float64":
		return "a number"
	case "bool":
		return "true or false"
	case "string":
		return "a string"
	}
	if strings.HasPrefix(goType, "[]") {
		return "a list"
	}
	return "a mapping"
}

func docNode(root *yaml.Node) *yaml.Node {
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		return root.Content[0]
	}
	return root
}

// pathAt finds the YAML path of a key on line: the key named key when given;
// else the key whose scalar value is value (yaml.v3 shortens long values to
// their start and "..."); else the first key on the line.
func pathAt(root *yaml.Node, line int, key, value string) string {
	var byKey, byValue, first string
	matches := func(v string) bool {
		if value == "" {
			return false
		}
		if p, ok := strings.CutSuffix(value, "..."); ok {
			return strings.HasPrefix(v, p)
		}
		return v == value
	}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := join(path, k.Value)
				if k.Line == line {
					if key != "" && k.Value == key && byKey == "" {
						byKey = p
					}
					if first == "" {
						first = p
					}
				}
				if v.Line == line && v.Kind == yaml.ScalarNode {
					if matches(v.Value) && byValue == "" {
						byValue = p
					}
					if first == "" {
						first = p
					}
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Line == line && c.Kind == yaml.ScalarNode {
					if matches(c.Value) && byValue == "" {
						byValue = p
					}
					if first == "" {
						first = p
					}
				}
				walk(c, p)
			}
		}
	}
	walk(docNode(root), "")
	switch {
	case byKey != "":
		return byKey
	case byValue != "":
		return byValue
	}
	return first
}

// pathOfNodeAt finds the path of the list or mapping value that starts on
// line.
func pathOfNodeAt(root *yaml.Node, line int) string {
	doc := docNode(root)
	found := ""
	var walk func(n *yaml.Node, path string) bool
	walk = func(n *yaml.Node, path string) bool {
		check := func(c *yaml.Node, p string) bool {
			if c.Line == line && c.Kind != yaml.ScalarNode {
				found = p
				return true
			}
			return walk(c, p)
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if check(n.Content[i+1], join(path, n.Content[i].Value)) {
					return true
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				if check(c, fmt.Sprintf("%s[%d]", path, i)) {
					return true
				}
			}
		}
		return false
	}
	walk(doc, "")
	return found
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var segRE = regexp.MustCompile(`([^.\[\]]+)|\[(\d+)\]`)

// lineOf returns the line of the deepest node on path that exists in the file.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, m := range segRE.FindAllStringSubmatch(path, -1) {
		var next *yaml.Node
		switch {
		case m[1] != "" && n.Kind == yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					line = n.Content[i].Line
					next = n.Content[i+1]
					break
				}
			}
		case m[2] != "" && n.Kind == yaml.SequenceNode:
			i, _ := strconv.Atoi(m[2])
			if i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}
