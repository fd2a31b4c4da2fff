// Package client is a typed client of baton's admin API, used by baton ctl,
// baton rollout and baton demo: one place that knows how a request is sent
// (JSON, the token, the CA) and how a refusal comes back (*Error with the
// API's status and code).
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Error is a refusal of the admin API: its status, its code (unauthorized,
// lease_held, no_canary, …) and its message.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// CodeOf returns the admin API's code of a refusal in err's chain ("" for
// other errors: unreachable, a bad answer).
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Options configure a Client.
type Options struct {
	// Token is sent as Authorization: Bearer; TokenFile, when set, is read
	// (its first "name:token" line, or its first line) at the first call.
	Token, TokenFile string
	// CAFile holds the PEM certificates that sign an HTTPS admin
	// listener's certificate (none: the system's).
	CAFile string
	// Timeout bounds each call. Default 30s.
	Timeout time.Duration
}

// Client talks to one baton's admin API. It is safe for concurrent use
// once the first call has read the token file.
type Client struct {
	base      string
	token     string
	tokenFile string
	http      *http.Client
}

// New returns a client of the admin API at base (a URL, or host:port for
// plain HTTP).
func New(base string, o Options) (*Client, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("the admin API's address must be a URL such as http://127.0.0.1:9090, got %q", base)
	}
	c := &Client{base: strings.TrimRight(base, "/"), token: o.Token, tokenFile: o.TokenFile}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	c.http = &http.Client{Timeout: o.Timeout}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the CA file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the CA file %s holds no PEM certificate", o.CAFile)
		}
		c.http.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	}
	return c, nil
}

// Base returns the API's URL.
func (c *Client) Base() string { return c.base }

// ReadToken reads a token file: the token of its first "name:token" line,
// or the first line as it is.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the token file: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, tok, ok := strings.Cut(line, ":"); ok {
			return strings.TrimSpace(tok), nil
		}
		return line, nil
	}
	return "", fmt.Errorf("the token file %s has no token", path)
}

// ErrUnreachable wraps a failure to reach the API at all.
var ErrUnreachable = errors.New("cannot reach the admin API")

// Do sends a request (body, when not nil, as JSON) and returns the status
// and the answer's bytes; a 2xx answer is decoded into out when out is not
// nil. A refusal is an *Error.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) (int, []byte, error) {
	if c.tokenFile != "" && c.token == "" {
		tok, err := ReadToken(c.tokenFile)
		if err != nil {
			return 0, nil, err
		}
		c.token = tok
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	if method != http.MethodGet {
		// The admin API takes changes only as JSON, body or not (a web
		// page cannot send that to another site without asking first).
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			// Given up by the caller (Ctrl-C, a lost lease): say so, and
			// let errors.Is see it, rather than blame the admin API.
			return 0, nil, fmt.Errorf("%s %s: %w", method, path, ctxErr)
		}
		return 0, nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, c.base, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 8<<20))
	if err != nil {
		return res.StatusCode, nil, fmt.Errorf("reading the answer: %w", err)
	}
	if res.StatusCode >= 300 {
		return res.StatusCode, data, refusal(res, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return res.StatusCode, data, fmt.Errorf("the admin API's answer is not what was expected: %w", err)
		}
	}
	return res.StatusCode, data, nil
}

// Stream opens a GET that answers as it goes (the live tail): the body is
// the caller's to read and close, and only ctx ends it — the Timeout of
// other calls does not apply. A refusal is an *Error, as with Do.
func (c *Client) Stream(ctx context.Context, path string, query url.Values, accept string) (io.ReadCloser, error) {
	if c.tokenFile != "" && c.token == "" {
		tok, err := ReadToken(c.tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = tok
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("GET %s: %w", path, ctxErr)
		}
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, c.base, err)
	}
	if res.StatusCode >= 300 {
		defer res.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		return nil, refusal(res, data)
	}
	return res.Body, nil
}

// refusal is the *Error of an answer above 2xx: the API's message and
// code, or its status line when the body says neither.
func refusal(res *http.Response, data []byte) *Error {
	var e struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		return &Error{Status: res.StatusCode, Message: "the admin API answered " + res.Status}
	}
	return &Error{Status: res.StatusCode, Code: e.Code, Message: e.Error}
}
