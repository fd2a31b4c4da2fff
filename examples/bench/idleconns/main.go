// Command idleconns opens many HTTP/1.1 keep-alive connections to one address
// and holds them, for measuring a proxy's memory per connection
// (examples/bench/rss.sh).
//
// Each connection sends one GET. In the default mode (-mode idle) it reads
// the whole response and then stays open and silent, as an idle keep-alive
// client does. With -mode stream it reads the response body for as long as it
// runs (a download that does not end while measured), as fast as it arrives
// or, with -read-rate, at most that many bytes per second per connection.
//
// Output, on stdout: one line "READY open=N" once all N connections are open
// (idle: response received; stream: status line and headers received), then
// every -status interval "STATUS open=N bytes=B" (open: connections the
// server has not closed; bytes: body bytes received so far, all connections).
// It exits after -hold, or on SIGINT or SIGTERM, closing every connection;
// with status 1 if the connections could not all be opened within -timeout.
//
//	idleconns -addr 127.0.0.1:8080 -n 10000
//	idleconns -addr 127.0.0.1:8080 -n 1000 -mode stream -path /big -read-rate 16384 -rcvbuf 65536
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	addr     string
	host     string
	path     string
	n        int
	mode     string
	parallel int
	readRate int
	rcvbuf   int
	timeout  time.Duration
	hold     time.Duration
	status   time.Duration
}

var (
	open  atomic.Int64 // connections established and not closed by the server
	bytes atomic.Int64 // body bytes received, all connections
)

func main() {
	var c config
	flag.StringVar(&c.addr, "addr", "127.0.0.1:8080", "`host:port` to connect to")
	flag.StringVar(&c.host, "host", "", "Host header (default: -addr)")
	flag.StringVar(&c.path, "path", "/", "request path")
	flag.IntVar(&c.n, "n", 10000, "number of connections")
	flag.StringVar(&c.mode, "mode", "idle", "idle: read the response, then hold the connection silent; stream: keep reading the body")
	flag.IntVar(&c.parallel, "parallel", 128, "connections being opened at once")
	flag.IntVar(&c.readRate, "read-rate", 0, "stream mode: most body `bytes` per second per connection (0: no limit)")
	flag.IntVar(&c.rcvbuf, "rcvbuf", 0, "SO_RCVBUF `bytes` for each connection (0: the kernel's default)")
	flag.DurationVar(&c.timeout, "timeout", 60*time.Second, "time allowed to open all connections")
	flag.DurationVar(&c.hold, "hold", 10*time.Minute, "exit after this long")
	flag.DurationVar(&c.status, "status", time.Second, "interval between STATUS lines")
	flag.Parse()
	if c.host == "" {
		c.host = c.addr
	}
	if c.n < 1 || c.parallel < 1 || c.readRate < 0 || c.rcvbuf < 0 || (c.mode != "idle" && c.mode != "stream") {
		fmt.Fprintln(os.Stderr, "idleconns: -n and -parallel must be positive, -read-rate and -rcvbuf not negative, -mode idle or stream")
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.hold)
	defer cancel()

	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: idleconns\r\n\r\n", c.path, c.host))
	dialer := net.Dialer{Timeout: 10 * time.Second}
	if c.rcvbuf > 0 {
		// Set before connect, so that the window scale offered fits it.
		dialer.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, c.rcvbuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}

	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, c.n)
		first error
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for _, conn := range conns {
			conn.Close()
		}
		mu.Unlock()
	}()
	openCtx, openCancel := context.WithTimeout(ctx, c.timeout)
	defer openCancel()
	sem := make(chan struct{}, c.parallel)
	for i := 0; i < c.n; i++ {
		select {
		case sem <- struct{}{}:
		case <-openCtx.Done():
		}
		if openCtx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, body, err := openOne(openCtx, &dialer, c, req)
			<-sem
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			conns = append(conns, conn)
			open.Add(1)
			go hold(ctx, c, conn, body)
		}()
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			break
		}
	}
	wg.Wait()
	mu.Lock()
	got, err := len(conns), first
	mu.Unlock()
	if ctx.Err() != nil {
		return nil // stopped by a signal or -hold before all were open
	}
	if err == nil && got < c.n {
		err = fmt.Errorf("opened %d of %d connections within %s", got, c.n, c.timeout)
	}
	if err != nil {
		return fmt.Errorf("%w (%d of %d open)", err, got, c.n)
	}
	fmt.Printf("READY open=%d\n", got)

	tick := time.NewTicker(c.status)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Printf("STATUS open=%d bytes=%d\n", open.Load(), bytes.Load())
			return nil
		case <-tick.C:
			fmt.Printf("STATUS open=%d bytes=%d\n", open.Load(), bytes.Load())
		}
	}
}

// openOne connects, sends the request and reads the response head (and, in
// idle mode, its body). It returns the connection and, in stream mode, the
// body still to read.
func openOne(ctx context.Context, d *net.Dialer, c config, req []byte) (net.Conn, io.Reader, error) {
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("reading the response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		conn.Close()
		return nil, nil, fmt.Errorf("status %s", resp.Status)
	}
	if c.mode == "stream" {
		conn.SetDeadline(time.Time{})
		return conn, resp.Body, nil
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("reading the body: %w", err)
	}
	bytes.Add(n)
	if resp.Close || br.Buffered() > 0 {
		conn.Close()
		return nil, nil, fmt.Errorf("connection not kept alive (Connection: close or extra bytes)")
	}
	conn.SetDeadline(time.Time{})
	return conn, nil, nil
}

// hold keeps one open connection until the server closes it or ctx ends:
// idle, it waits for the server to close; streaming, it reads the body.
func hold(ctx context.Context, c config, conn net.Conn, body io.Reader) {
	defer open.Add(-1)
	if body == nil {
		var b [1]byte
		conn.Read(b[:]) // returns when the server closes, or when run closes conn
		return
	}
	buf := make([]byte, 16384)
	if c.readRate == 0 {
		for {
			n, err := body.Read(buf)
			bytes.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
	// At most readRate bytes per second: a quarter of it every 250 ms.
	chunk := max(c.readRate/4, 1)
	if chunk < len(buf) {
		buf = buf[:chunk]
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		for left := chunk; left > 0; {
			n, err := body.Read(buf[:min(left, len(buf))])
			bytes.Add(int64(n))
			left -= n
			if err != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
