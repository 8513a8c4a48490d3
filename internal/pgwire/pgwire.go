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
	"sync"
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
	r    *bufio.Reader // nil while an idle reader has given its buffer back
	src  io.Reader
	size int
	buf  []byte // copy of a frame larger than the read buffer
	max  int
	// wait, when set, blocks until src has bytes to read without
	// consuming any; the reader lends its buffers back while it waits, so
	// an idle connection holds none.
	wait func() error
}

// readerPools holds idle readers' buffers, by size.
var readerPools sync.Map // int → *sync.Pool of *bufio.Reader

func readerPool(size int) *sync.Pool {
	if p, ok := readerPools.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := readerPools.LoadOrStore(size, &sync.Pool{New: func() any { return bufio.NewReaderSize(nil, size) }})
	return p.(*sync.Pool)
}

// NewReader returns a Reader over r that refuses frames with a body longer
// than maxBytes.
func NewReader(r io.Reader, bufBytes, maxBytes int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, bufBytes), src: r, size: bufBytes, max: maxBytes}
}

// NewIdleReader is NewReader for a connection that is mostly idle: before
// a read that would block with nothing buffered it calls wait, which must
// block until r has bytes to read without consuming them, and meanwhile
// holds no buffer.
func NewIdleReader(r io.Reader, wait func() error, bufBytes, maxBytes int) *Reader {
	return &Reader{src: r, size: bufBytes, max: maxBytes, wait: wait}
}

// release gives an idle reader's buffers back.
func (r *Reader) release() {
	if r.r != nil {
		r.r.Reset(nil)
		readerPool(r.size).Put(r.r)
		r.r = nil
	}
	r.buf = nil
}

// Next reads one frame and returns its type byte and the whole frame (type,
// length, body). The frame is only valid until the next call to Next.
func (r *Reader) Next() (byte, []byte, error) {
	if r.wait != nil && (r.r == nil || r.r.Buffered() == 0) {
		r.release()
		if err := r.wait(); err != nil {
			return 0, nil, err
		}
	}
	if r.r == nil {
		r.r = readerPool(r.size).Get().(*bufio.Reader)
		r.r.Reset(r.src)
	}
	hdr, err := r.r.Peek(headerBytes)
	if err != nil {
		if len(hdr) > 0 {
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
		return 0, nil, err
	}
	t := hdr[0]
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 {
		return 0, nil, fmt.Errorf("%w: type %q declares %d bytes", ErrMalformed, t, n)
	}
	if n-4 > r.max {
		return 0, nil, fmt.Errorf("%w: type %q declares %d bytes, limit is %d", ErrTooLarge, t, n-4, r.max)
	}
	total := 1 + n
	if total <= r.r.Size() {
		// The frame fits the read buffer: hand it out from there, with no
		// copy. It stays put until the next read.
		frame, err := r.r.Peek(total)
		if err != nil {
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
		_, _ = r.r.Discard(total)
		return t, frame, nil
	}
	var h [headerBytes]byte
	copy(h[:], hdr)
	_, _ = r.r.Discard(headerBytes)
	buf := r.buf[:0]
	if cap(buf) < min(total, growStepBytes) {
		buf = make([]byte, 0, max(min(total, growStepBytes), 512))
	}
	buf = append(buf, h[:]...)
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
	return t, buf, nil
}

// Buffered reports how many bytes can be read without blocking.
func (r *Reader) Buffered() int {
	if r.r == nil {
		return 0
	}
	return r.r.Buffered()
}

// HasFrame reports whether a whole frame is already buffered, so that Next
// will not block. When it is false, whatever was written in response to
// earlier frames should be flushed.
func (r *Reader) HasFrame() bool {
	if r.r == nil || r.r.Buffered() < headerBytes {
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
