package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

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
	return Parse(data, filepath.Base(path))
}

// Parse is Load for bytes already read; name is used in error messages.
func Parse(data []byte, name string) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: name, Msg: "the file is empty; it needs at least one pool"}
		}
		return nil, yamlSyntaxError(err, name)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: name, Line: extra.Line, Msg: "a second YAML document (---) is not allowed; put everything in one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlSyntaxError(err, name)
	}

	cfg := &Config{}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	var errs []error
	if err := strict.Decode(cfg); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, yamlSyntaxError(err, name)
		}
		for _, msg := range te.Errors {
			errs = append(errs, decodeError(&root, msg, name))
		}
		return nil, errors.Join(errs...)
	}
	cfg.applyDefaults()
	for _, e := range cfg.Validate() {
		var fe *Error
		if errors.As(e, &fe) {
			fe.File = name
			if fe.Line == 0 {
				fe.Line = lineOf(&root, fe.Path)
			}
		}
		errs = append(errs, e)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
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

func yamlSyntaxError(err error, name string) error {
	m := lineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	return &Error{File: name, Line: line, Msg: "YAML syntax: " + m[2]}
}

var (
	unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type`)
	dupKeyRE       = regexp.MustCompile(`^mapping key "(.+)" already defined at line (\d+)$`)
	cannotRE       = regexp.MustCompile("^cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

// decodeError turns one of yaml.v3's "line N: ..." messages into an Error
// carrying the key's path.
func decodeError(root *yaml.Node, msg, name string) error {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return &Error{File: name, Msg: msg}
	}
	line, _ := strconv.Atoi(m[1])
	text := m[2]
	if u := unknownFieldRE.FindStringSubmatch(text); u != nil {
		return &Error{File: name, Line: line, Path: pathAt(root, line, u[1]), Msg: "unknown key"}
	}
	if d := dupKeyRE.FindStringSubmatch(text); d != nil {
		return &Error{File: name, Line: line, Path: pathAt(root, line, d[1]), Msg: "duplicate key (first set on line " + d[2] + ")"}
	}
	if c := cannotRE.FindStringSubmatch(text); c != nil {
		return &Error{File: name, Line: line, Path: pathAt(root, line, ""), Msg: fmt.Sprintf("must be %s, got %s %q", typeWord(c[3]), c[1], c[2])}
	}
	return &Error{File: name, Line: line, Path: pathAt(root, line, ""), Msg: text}
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

// pathAt finds the YAML path of the key on line (named key when given, else
// the value on that line).
func pathAt(root *yaml.Node, line int, key string) string {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	var best string
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := join(path, k.Value)
				if k.Line == line && (key == "" || k.Value == key) && (best == "" || key != "") {
					best = p
				}
				if v.Line == line && key == "" && v.Kind == yaml.ScalarNode && best == "" {
					best = p
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Line == line && key == "" && c.Kind == yaml.ScalarNode && best == "" {
					best = p
				}
				walk(c, p)
			}
		}
	}
	walk(doc, "")
	return best
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
