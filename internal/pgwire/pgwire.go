// Package pgwire frames PostgreSQL protocol messages without decoding them.
//
// kproxy relays most messages untouched, so it needs their boundaries and type
// bytes, not their contents. Reader hands out each whole frame (type byte,
// length and body) as raw bytes that can be forwarded as they are; the few
// messages kproxy must understand are decoded from those bytes with pgproto3.
//
// Limits are enforced before anything is allocated: a frame whose declared
// length exceeds the reader's maximum is reported as ErrTooLarge, so hostile
// input cannot make kproxy allocate without bound.
package pgwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Protocol codes found in the first message of a connection.
const (
	ProtocolVersion30  = 196608   // 3.0
	CancelRequestCode  = 80877102 // CancelRequest
	SSLRequestCode     = 80877103 // SSLRequest
	GSSENCRequestCode  = 80877104 // GSSENCRequest
	MaxStartupBytes    = 10000    // Postgres' own limit for a startup packet
	headerBytes        = 5
	growStepBytes      = 64 << 10 // first allocation for a large frame
	startupHeaderBytes = 4
)

// ErrTooLarge is returned for a frame longer than the reader allows.
var ErrTooLarge = errors.New("message too large")

// ErrMalformed is returned for a frame whose length field is impossible.
var ErrMalformed = errors.New("malformed message length")

// PartialError reports a read that failed in the middle of a frame: the
// stream is no longer at a message boundary and cannot be used further.
// A read that fails before the first byte of a frame returns the plain error.
type PartialError struct{ Err error }

func (e *PartialError) Error() string { return "incomplete message: " + e.Err.Error() }
func (e *PartialError) Unwrap() error { return e.Err }

// Reader reads typed frames. It is not safe for concurrent use.
type Reader struct {
	r   *bufio.Reader
	buf []byte
	max int
}

// NewReader returns a Reader over r that refuses frames with a body longer
// than maxBytes.
func NewReader(r io.Reader, bufBytes, maxBytes int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, bufBytes), max: maxBytes}
}

// Next reads one frame and returns its type byte and the whole frame (type,
// length, body). The frame is only valid until the next call to Next.
func (r *Reader) Next() (byte, []byte, error) {
	var hdr [headerBytes]byte
	if got, err := io.ReadFull(r.r, hdr[:]); err != nil {
		if got > 0 {
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 {
		return 0, nil, fmt.Errorf("%w: type %q declares %d bytes", ErrMalformed, hdr[0], n)
	}
	if n-4 > r.max {
		return 0, nil, fmt.Errorf("%w: type %q declares %d bytes, limit is %d", ErrTooLarge, hdr[0], n-4, r.max)
	}
	total := 1 + n
	buf := r.buf[:0]
	if cap(buf) < min(total, growStepBytes) {
		buf = make([]byte, 0, max(min(total, growStepBytes), 512))
	}
	buf = append(buf, hdr[:]...)
	// Memory grows with the bytes that actually arrive, not with the length
	// a client declares.
	for len(buf) < total {
		if len(buf) == cap(buf) {
			buf = append(buf[:cap(buf)], make([]byte, min(cap(buf), total-cap(buf)))...)[:len(buf)]
		}
		got, err := io.ReadFull(r.r, buf[len(buf):min(cap(buf), total)])
		buf = buf[:len(buf)+got]
		if err != nil {
			r.buf = buf[:0]
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
	}
	r.buf = buf
	// Give back memory held for a rare huge message.
	if cap(r.buf) > 1<<20 && total < 1<<16 {
		r.buf = nil
	}
	return hdr[0], buf, nil
}

// Buffered reports how many bytes can be read without blocking.
func (r *Reader) Buffered() int { return r.r.Buffered() }

// HasFrame reports whether a whole frame is already buffered, so that Next
// will not block. When it is false, whatever was written in response to
// earlier frames should be flushed.
func (r *Reader) HasFrame() bool {
	if r.r.Buffered() < headerBytes {
		return false
	}
	hdr, err := r.r.Peek(headerBytes)
	if err != nil {
		return false
	}
	return r.r.Buffered() >= 1+int(binary.BigEndian.Uint32(hdr[1:]))
}

// ReadStartup reads an untyped startup-phase frame (StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest) directly from r, reading no
// further than its end so that a TLS handshake can follow. The returned slice
// holds the whole frame, length included.
func ReadStartup(r io.Reader) ([]byte, error) {
	var hdr [startupHeaderBytes]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 {
		return nil, fmt.Errorf("%w: startup packet declares %d bytes", ErrMalformed, n)
	}
	if n > MaxStartupBytes {
		return nil, fmt.Errorf("%w: startup packet declares %d bytes, limit is %d", ErrTooLarge, n, MaxStartupBytes)
	}
	buf := make([]byte, n)
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[startupHeaderBytes:]); err != nil {
		return nil, noEOF(err)
	}
	return buf, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ReadyForQuery returns the frame of a ReadyForQuery message with status st.
func ReadyForQuery(st byte) []byte { return []byte{'Z', 0, 0, 0, 5, st} }

// Transaction states carried by ReadyForQuery.
const (
	TxIdle   byte = 'I'
	TxActive byte = 'T'
	TxFailed byte = 'E'
)
