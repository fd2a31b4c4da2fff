package admin

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
)

// Token is one named API token. Only its digest is kept.
type Token struct {
	Name string
	sum  [32]byte
}

var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$`)

// minTokenLen is the shortest token accepted: a guessable token on an admin
// API that can drain every server would be worse than none.
const minTokenLen = 16

// LoadTokens reads a token file: one "name:token" per line; blank lines and
// lines starting with # are ignored. Every problem is reported with its line.
func LoadTokens(path string) ([]Token, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the token file: %w", err)
	}
	var out []Token
	seen := map[string]int{}
	var problems []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		name, tok = strings.TrimSpace(name), strings.TrimSpace(tok)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s:%d: want name:token", path, n))
		case !tokenNameRE.MatchString(name):
			problems = append(problems, fmt.Sprintf("%s:%d: token name %q must be letters, digits, '.', '_', '@' or '-'", path, n, name))
		case len(tok) < minTokenLen:
			problems = append(problems, fmt.Sprintf("%s:%d: token of %q is shorter than %d characters", path, n, name, minTokenLen))
		case seen[name] != 0:
			problems = append(problems, fmt.Sprintf("%s:%d: token name %q is already on line %d", path, n, name, seen[name]))
		default:
			seen[name] = n
			out = append(out, Token{Name: name, sum: sha256.Sum256([]byte(tok))})
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("token file: %s", strings.Join(problems, "; "))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("token file %s has no token", path)
	}
	return out, nil
}

// TokenSet is the API's tokens, replaced as a whole when the token file is
// read again (a revoked token stops working without a restart).
//
// It is safe for concurrent use. TokenSet values must not be copied.
type TokenSet struct {
	p       atomic.Pointer[[]Token]
	problem atomic.Pointer[string] // why no token is accepted; nil when the file loaded
}

// NewTokenSet returns a set holding tokens.
func NewTokenSet(tokens []Token) *TokenSet {
	ts := &TokenSet{}
	ts.Store(tokens)
	return ts
}

// Store replaces the tokens.
func (ts *TokenSet) Store(tokens []Token) {
	ts.p.Store(&tokens)
	ts.problem.Store(nil)
}

// Revoke accepts no token any more, for the reason given: a token file that
// is emptied, removed or broken revokes every token rather than leaving
// the old ones in force.
func (ts *TokenSet) Revoke(reason string) {
	ts.p.Store(&[]Token{})
	ts.problem.Store(&reason)
}

// Problem returns why no token is accepted ("" when the file loaded).
func (ts *TokenSet) Problem() string {
	if ts == nil {
		return ""
	}
	if p := ts.problem.Load(); p != nil {
		return *p
	}
	return ""
}

// Load returns the tokens in force (none for a nil set).
func (ts *TokenSet) Load() []Token {
	if ts == nil {
		return nil
	}
	if p := ts.p.Load(); p != nil {
		return *p
	}
	return nil
}
