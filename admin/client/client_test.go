package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/baton-lb/baton/admin/client"
)

// TestClientSendsAndReadsTheContract: changes go as JSON with the token; a
// refusal comes back as *Error with the API's status and code; an API that
// is not there is ErrUnreachable.
func TestClientSendsAndReadsTheContract(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer ops-token-0123456789" {
			w.WriteHeader(401)
			_, _ = w.Write([]byte(`{"error":"a valid token is required","code":"unauthorized"}`))
			return
		}
		if r.Method == "POST" && r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(415)
			_, _ = w.Write([]byte(`{"error":"send JSON","code":"unsupported_media_type"}`))
			return
		}
		if r.URL.Path == "/v1/pools/shop/canary/promote" {
			w.WriteHeader(409)
			_, _ = w.Write([]byte(`{"error":"pool \"shop\" has no canary to promote","code":"no_canary"}`))
			return
		}
		_, _ = w.Write([]byte(`{"name":"shop"}`))
	}))
	defer srv.Close()
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# ops\nops:ops-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(srv.URL, client.Options{TokenFile: tokens})
	if err != nil {
		t.Fatal(err)
	}
	var pool struct{ Name string }
	if st, _, err := c.Do(context.Background(), "GET", "/v1/pools/shop", nil, nil, &pool); err != nil || st != 200 || pool.Name != "shop" {
		t.Fatalf("GET: %d %v %+v", st, err, pool)
	}
	_, _, err = c.Do(context.Background(), "POST", "/v1/pools/shop/canary/promote", nil, nil, nil)
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 409 || ae.Code != "no_canary" || client.CodeOf(err) != "no_canary" {
		t.Errorf("a refusal: %#v", err)
	}
	anon, _ := client.New(srv.URL, client.Options{})
	if _, _, err := anon.Do(context.Background(), "GET", "/v1/pools", nil, nil, nil); client.CodeOf(err) != "unauthorized" {
		t.Errorf("without a token: %v", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	gone, _ := client.New(addr, client.Options{})
	if _, _, err := gone.Do(context.Background(), "GET", "/v1/pools", nil, nil, nil); !errors.Is(err, client.ErrUnreachable) {
		t.Errorf("nothing listening: %v", err)
	}
	if _, err := client.New("http://", client.Options{}); err == nil {
		t.Errorf("a URL without a host was accepted")
	}
}

// TestClientCallGivenUpIsTheCallersContext: a call the caller gives up
// (Ctrl-C mid-drain-wait) ends with the caller's context error, not
// ErrUnreachable: the admin API did nothing wrong.
func TestClientCallGivenUpIsTheCallersContext(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := client.New(srv.URL, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	_, _, err = c.Do(ctx, "POST", "/v1/pools/shop/backends/web-1/drain", nil, nil, nil)
	if !errors.Is(err, context.Canceled) || errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("a call given up mid-way: %v; want context.Canceled, not ErrUnreachable", err)
	}
}
