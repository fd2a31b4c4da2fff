// Package h1 is baton's HTTP/1.1 wire codec towards backends: it scans a
// client's request head and writes the head baton sends (AppendRequestHead),
// reads a backend's response head (ReadResponseHead) and frames its body
// (BodyReader, CopyLength). It holds no connections, deadlines or policy:
// proxy decides what to do with what it reports. Where request smuggling
// and response desync bugs would live, it is strict, and it is reachable
// from plain unit tests and fuzz targets.
//
// # What a response head may be
//
// ReadResponseHead accepts a status line "HTTP/1.0" or "HTTP/1.1", SP, a
// code 100–599, and optionally SP and a reason without control characters
// (HTAB aside). Lines may end in CRLF or a bare LF (RFC 9112 §2.2 lets a
// recipient accept LF; fasthttp re-serialises the head for the client, so
// a bare LF never reaches it). A field line folded with obs-fold is joined
// with single spaces (RFC 9112 §5.2). Up to ten interim 1xx responses are
// skipped before the final one. Everything else is rejected with a
// *BadResponseError:
//
//   - a 101 (baton asked for no upgrade here);
//   - a field line without a colon, a field name that is empty or not a
//     token, a value with control characters other than HTAB (a bare CR
//     included: RFC 9112 §2.2 allows refusing it or replacing it with SP,
//     and baton reads Connection and the framing fields as they came);
//   - Content-Length that is not 1–18 digits, is folded, or repeats with a
//     different value (repeats of one value are one length);
//   - more than one Transfer-Encoding field, one that is folded, or one
//     whose value is anything but "chunked" (lists, "identity" and codings
//     included: baton cannot decode them).
//
// Other failures are ErrNoResponse (the connection ended before any
// byte), ErrTruncatedHead (it ended inside the head), ErrHeadTooLarge (the
// head does not fit in the bufio.Reader's buffer; its text names 16 KiB,
// the size baton's backend connections use), ErrTooManyInterim, or the
// reader's own error (a timeout) as it is.
//
// The framing follows RFC 9112 §6.3: no body for a HEAD request, 1xx, 204
// and 304 (Announced when such a response claims one anyway); chunked when
// Transfer-Encoding says so, even beside a Content-Length or in an HTTP/1.0
// response, and then the connection must close (CloseConn), since the two
// ends may have disagreed; Content-Length; else the body runs until the
// backend closes. CloseConn is also set by "Connection: close" and by an
// HTTP/1.0 response without "Connection: keep-alive".
//
// The fields copied into the fasthttp.ResponseHeader are the end-to-end
// ones, in order: Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
// Upgrade, Transfer-Encoding, Content-Length and every field named in
// Connection stay behind (RFC 9110 §7.6.1); the caller frames the body.
//
// # Request heads
//
// The request itself was parsed by fasthttp. RequestScan.Scan reads its raw
// header block once and reports what proxy must decide on (bare LF line
// ends, obs-fold, a field name that is not a token, Transfer-Encoding,
// forwarding fields, Connection's tokens); it rejects nothing.
// AppendRequestHead writes the head for the backend: the request line with
// the target as the client sent it and HTTP/1.1, the client's fields in
// order with CRLF line ends and folds joined, minus hop-by-hop fields,
// those named in Connection, baton's own X-Forwarded-* and, unless from a
// trusted proxy, X-Real-IP and Forwarded; then X-Forwarded-For, -Proto and
// -Host and the framing of bodyLen (a Content-Length, BodyChunked for
// chunked, or an explicit zero when the client sent one).
//
// # What a chunked body may be
//
// A chunk-size line is hex digits (leading zeros allowed) of a value below
// 2^60, optional SP or HTAB, then nothing or a ";"-extension without
// control characters (which is ignored). Each chunk's data must be
// followed by CRLF. After the last chunk, trailer lines are read up to the
// empty line and dropped unparsed. Every line of the framing must end in
// CRLF and hold no other CR: a bare LF, which RFC 9112 tolerates in a head
// but not here (erratum 7633), is rejected. A malformed line is a
// *BadResponseError, a line longer than the reader's buffer too; a body
// cut short is io.ErrUnexpectedEOF.
//
// # Buffers
//
// Nothing here allocates in steady state. The bufio.Reader is the
// caller's: the codec reads from it and never keeps it beyond the
// BodyReader that holds it until its next Reset. Slices the codec hands
// out alias memory it does not own: ConnTokens and RequestScan.BadName
// alias the header block they were read from (the request's raw headers,
// valid while the request is; for a response, the reader's buffer, stale
// after the next read on it); BodyReader.CopyTo passes w slices of the
// reader's buffer, valid only during the Write call. Values put into the
// fasthttp.ResponseHeader are copied by fasthttp. The scratch slice
// ReadResponseHead takes is returned, grown, for the caller to keep.
//
// Nothing in this package is safe for concurrent use; one exchange at a
// time uses each value.
package h1
