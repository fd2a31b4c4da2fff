package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// An Awaiter is told when a BodyReader is about to read from the network
// with nothing buffered: the moment to renew read (and write) deadlines.
type Awaiter interface {
	AwaitData()
}

// BodyReader reads one response body from a backend connection's
// bufio.Reader by its framing: exactly Length bytes, chunked (chunk data
// only; extensions and the trailer section are read and dropped), or until
// the connection closes. It reads nothing past the body, so the reader is
// left at the next response. A malformed chunked body is a
// *BadResponseError; a body cut short is io.ErrUnexpectedEOF; br's own
// errors (timeouts) come back as they are. After an error the BodyReader is
// unusable until Reset.
//
// The zero value has FrameNone: it is done. A BodyReader is not safe for
// concurrent use; it holds br but does not own it.
type BodyReader struct {
	br        *bufio.Reader
	aw        Awaiter
	framing   Framing
	left      int64 // bytes left in the body or the current chunk
	chunkCRLF bool  // a chunk's data ended; its CRLF comes next
	done      bool  // the body ended cleanly
}

// Reset starts a body of the given framing at br's position; length is the
// Content-Length for FrameLength and ignored otherwise. aw, when not nil,
// is called before each read that will wait for the network.
func (r *BodyReader) Reset(br *bufio.Reader, f Framing, length int64, aw Awaiter) {
	*r = BodyReader{br: br, aw: aw, framing: f}
	switch f {
	case FrameLength:
		r.left = length
		r.done = length <= 0
	case FrameNone:
		r.done = true
	}
}

// Framing returns the framing r was Reset with.
func (r *BodyReader) Framing() Framing { return r.framing }

// Left returns, for FrameLength, how many bytes of the body are still to
// be read.
func (r *BodyReader) Left() int64 { return r.left }

// Done reports whether the body ended cleanly: every byte was read (and
// with chunked framing, the last chunk and the trailer section).
func (r *BodyReader) Done() bool { return r.done }

// awaitData calls the Awaiter when the next read waits for the network.
func (r *BodyReader) awaitData() {
	if r.aw != nil && r.br.Buffered() == 0 {
		r.aw.AwaitData()
	}
}

// Read reads body bytes into p. It returns io.EOF once the body is done;
// with FrameLength the last bytes come with a nil error (Done reports the
// end), with FrameClose with io.EOF. With chunked framing one Read returns
// data from one chunk at most, so a caller forwarding each Read forwards
// each chunk as it arrives (server-sent events, long polls).
func (r *BodyReader) Read(p []byte) (int, error) {
	if r.done {
		return 0, io.EOF
	}
	br := r.br
	r.awaitData()
	switch r.framing {
	case FrameLength:
		n, err := br.Read(p[:min(int64(len(p)), r.left)])
		r.left -= int64(n)
		if r.left == 0 {
			r.done = true
			return n, nil
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	case FrameClose:
		n, err := br.Read(p)
		if err == io.EOF {
			r.done = true
		}
		return n, err
	}
	if r.left == 0 {
		if err := r.nextChunk(); err != nil {
			return 0, err
		}
	}
	n, err := br.Read(p[:min(int64(len(p)), r.left)])
	r.left -= int64(n)
	if r.left == 0 {
		r.chunkCRLF = true
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// CopyTo writes the rest of the body to w straight from br's buffer: no
// intermediate copy and no allocation. Each Write gets what br holds (for
// chunked bodies, within one chunk), so a w that flushes forwards data as it
// arrives; w must not keep the slice after Write returns. readErr is an
// error reading or framing the body, writeErr one from w; at most one is
// set. n counts the bytes w accepted.
func (r *BodyReader) CopyTo(w io.Writer) (n int64, readErr, writeErr error) {
	br := r.br
	for !r.done {
		if r.framing == FrameChunked && r.left == 0 {
			if err := r.nextChunk(); err != nil {
				if err == io.EOF {
					break
				}
				return n, err, nil
			}
		}
		r.awaitData()
		if _, err := br.Peek(1); err != nil {
			if err == io.EOF && r.framing == FrameClose {
				r.done = true
				break
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err, nil
		}
		k := int64(br.Buffered())
		if r.framing != FrameClose {
			k = min(k, r.left)
		}
		b, _ := br.Peek(int(k))
		m, werr := w.Write(b)
		_, _ = br.Discard(m)
		n += int64(m)
		if r.framing != FrameClose {
			r.left -= int64(m)
			if r.left == 0 {
				if r.framing == FrameLength {
					r.done = true
				} else {
					r.chunkCRLF = true
				}
			}
		}
		if werr != nil {
			return n, nil, werr
		}
	}
	return n, nil, nil
}

// nextChunk reads the next chunk's header (after the previous chunk's CRLF)
// into r.left. At the last chunk it reads the trailer section, marks the
// body done and returns io.EOF.
func (r *BodyReader) nextChunk() error {
	if r.chunkCRLF {
		line, err := r.readLine()
		if err != nil {
			return err
		}
		if len(line) != 0 {
			return badResponse("chunk data longer than its size")
		}
		r.chunkCRLF = false
	}
	r.awaitData()
	line, err := r.readLine()
	if err != nil {
		return err
	}
	size, ok := parseChunkSize(line)
	if !ok {
		return badResponse("chunk size %.20q", line)
	}
	if size == 0 {
		// Trailer fields end the body; baton does not forward them.
		for {
			r.awaitData()
			line, err := r.readLine()
			if err != nil {
				return err
			}
			if len(line) == 0 {
				break
			}
		}
		r.done = true
		return io.EOF
	}
	r.left = size
	return nil
}

// CopyLength copies a body of exactly n bytes (Content-Length framing) from
// br to w, in pieces of up to br's size, each written once it is all
// buffered. A body cut short is io.ErrUnexpectedEOF, after what did arrive
// was written.
func CopyLength(w io.Writer, br *bufio.Reader, n int) error {
	for n > 0 {
		b, err := br.Peek(min(n, br.Size()))
		m, werr := w.Write(b)
		_, _ = br.Discard(m)
		n -= m
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if werr != nil {
			return werr
		}
	}
	return nil
}

func chunkErr(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	if errors.Is(err, bufio.ErrBufferFull) {
		return badResponse("chunk header line too long")
	}
	return err
}

// readLine reads a line of chunked framing and returns it without its CRLF.
// It aliases br's buffer until the next read.
func (r *BodyReader) readLine() ([]byte, error) {
	line, err := r.br.ReadSlice('\n')
	if err != nil {
		return nil, chunkErr(err)
	}
	line, ok := chunkLine(line)
	if !ok {
		return nil, errChunkLineEnd
	}
	return line, nil
}

// errChunkLineEnd: RFC 9112 lets a recipient take a bare LF for CRLF in a
// head (§2.2), not in chunked framing (§7.1, erratum 7633); a peer that
// ends a chunk line there may frame the body differently from baton, and
// what is left on the connection would be read as the next response.
var errChunkLineEnd = &BadResponseError{why: "chunked framing line not ending in CRLF, or with a CR inside"}

// chunkLine returns a line of chunked framing (as read, through its LF)
// without its CRLF; ok is false when it ends in a bare LF or holds another
// CR.
func chunkLine(line []byte) (_ []byte, ok bool) {
	n := len(line)
	if n < 2 || line[n-2] != '\r' {
		return nil, false
	}
	line = line[:n-2]
	return line, bytes.IndexByte(line, '\r') < 0
}

// parseChunkSize parses a chunk-size line: hex digits, then optional
// whitespace and chunk extensions, which are ignored.
func parseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		d, ok := Unhex(line[i])
		if !ok {
			break
		}
		if n >= 1<<56 {
			return 0, false // over 2^60: no honest backend sends that
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 && rest[0] != ';' {
		return 0, false
	}
	return n, validValue(rest)
}

// Unhex returns the value of the hex digit c.
func Unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
