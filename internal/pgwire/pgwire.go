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
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
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
	src  io.Reader
	raw  syscall.RawConn // set for an idle reader: see NewIdleReader
	size int
	b    []byte // read buffer; nil while an idle reader waits
	r, w int    // b[r:w] is read but not yet handed out
	big  []byte // frames larger than the read buffer are copied here
	max  int
	// pendType and pendTotal describe a large frame whose reading an error
	// interrupted; big holds its first bytes.
	pendType  byte
	pendTotal int
	// readRaw, bound once, and what it read last: an idle reader's read
	// allocates nothing.
	rawFn  func(fd uintptr) bool
	rawN   int
	rawErr error
}

// bufPools holds idle readers' buffers, by size: a bounded free list,
// which unlike a sync.Pool is not emptied by every garbage collection
// (a busy proxy would otherwise allocate a fresh buffer after each one).
var bufPools sync.Map // int → chan []byte

// freeBuffers bounds each free list.
const freeBuffers = 128

func freeList(size int) chan []byte {
	if p, ok := bufPools.Load(size); ok {
		return p.(chan []byte)
	}
	p, _ := bufPools.LoadOrStore(size, make(chan []byte, freeBuffers))
	return p.(chan []byte)
}

func getBuf(size int) []byte {
	select {
	case b := <-freeList(size):
		return b
	default:
		return make([]byte, size)
	}
}

func putBuf(b []byte) {
	select {
	case freeList(cap(b)) <- b[:cap(b)]:
	default: // enough spare buffers already
	}
}

// NewReader returns a Reader over r with a read buffer of bufBytes that
// refuses frames with a body longer than maxBytes.
func NewReader(r io.Reader, bufBytes, maxBytes int) *Reader {
	return &Reader{src: r, size: bufBytes, b: make([]byte, bufBytes), max: maxBytes}
}

// NewIdleReader is NewReader for a socket that is often idle, as a
// client's is between transactions: Release gives its buffer back while
// nothing is buffered (a parked client holds none), and the next call to
// Next takes one again. It waits for the socket to be readable through raw
// (from syscall.Conn), and reads with one system call once it is.
func NewIdleReader(r io.Reader, raw syscall.RawConn, bufBytes, maxBytes int) *Reader {
	rd := &Reader{src: r, raw: raw, size: bufBytes, max: maxBytes}
	rd.rawFn = rd.readRaw
	return rd
}

// Release gives an idle reader's buffers back when nothing of a next frame
// has been read (Idle), and reports whether it did; a reader that is not
// idle, or not made by NewIdleReader, keeps them.
func (r *Reader) Release() bool {
	if r.raw == nil || !r.Idle() {
		return false
	}
	if r.b != nil {
		putBuf(r.b)
		r.b = nil
	}
	r.r, r.w = 0, 0
	r.big = nil
	return true
}

func (r *Reader) take() {
	if r.b == nil {
		r.b = getBuf(r.size)
	}
}

// read reads into b[w:]; fill has taken the buffer.
func (r *Reader) read() (int, error) {
	if r.raw == nil || r.w > r.r {
		return r.src.Read(r.b[r.w:])
	}
	err := r.raw.Read(r.rawFn)
	n, rerr := r.rawN, r.rawErr
	r.rawErr = nil
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n <= 0:
		return 0, io.EOF
	}
	return n, nil
}

// readRaw is the function an idle reader's read gives its RawConn: it
// reads into b[w:], and asks to wait for the socket while there is
// nothing to read.
func (r *Reader) readRaw(fd uintptr) bool {
	for {
		r.rawN, r.rawErr = syscall.Read(int(fd), r.b[r.w:])
		if r.rawErr != syscall.EINTR {
			break
		}
	}
	return r.rawErr != syscall.EAGAIN
}

// fill makes at least need bytes (need <= size) available in b[r:w].
func (r *Reader) fill(need int) error {
	if r.w-r.r >= need {
		return nil
	}
	r.take()
	if len(r.b)-r.r < need {
		copy(r.b, r.b[r.r:r.w])
		r.w -= r.r
		r.r = 0
	}
	for r.w-r.r < need {
		n, err := r.read()
		r.w += n
		if err != nil {
			if r.w-r.r >= need {
				return nil
			}
			return err
		}
	}
	return nil
}

// Next reads one frame and returns its type byte and the whole frame (type,
// length, body). The frame is only valid until the next call to Next.
func (r *Reader) Next() (byte, []byte, error) {
	if r.pendTotal > 0 {
		// A large frame a read error (a deadline) interrupted: go on.
		t, total := r.pendType, r.pendTotal
		r.pendTotal = 0
		return r.readLarge(t, total, r.big)
	}
	if r.r == r.w {
		// Empty: start over at the front. An idle reader gives its
		// buffer back only once a read finds nothing to read.
		r.r, r.w = 0, 0
	}
	if err := r.fill(headerBytes); err != nil {
		if r.w > r.r {
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
		return 0, nil, err
	}
	t := r.b[r.r]
	n := int(binary.BigEndian.Uint32(r.b[r.r+1:]))
	if n < 4 {
		return 0, nil, fmt.Errorf("%w: type %q declares %d bytes", ErrMalformed, t, n)
	}
	if n-4 > r.max {
		return 0, nil, fmt.Errorf("%w: type %q declares %d bytes, limit is %d", ErrTooLarge, t, n-4, r.max)
	}
	total := 1 + n
	if total <= r.size {
		// The frame fits the read buffer: hand it out from there, with no
		// copy. It stays put until the next call.
		if err := r.fill(total); err != nil {
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
		frame := r.b[r.r : r.r+total]
		r.r += total
		return t, frame, nil
	}
	buf := r.big[:0]
	if cap(buf) < min(total, growStepBytes) {
		buf = make([]byte, 0, max(min(total, growStepBytes), 512))
	}
	// What is buffered first, then straight from the source. Memory grows
	// with the bytes that actually arrive, not with the length a client
	// declares.
	buf = append(buf, r.b[r.r:r.w]...)
	r.r, r.w = 0, 0
	return r.readLarge(t, total, buf)
}

// readLarge reads the rest of a frame of total bytes that does not fit the
// read buffer into buf, which holds its first bytes. After a read error the
// bytes so far are kept, and the next call to Next goes on from there.
func (r *Reader) readLarge(t byte, total int, buf []byte) (byte, []byte, error) {
	for len(buf) < total {
		if len(buf) == cap(buf) {
			buf = append(buf[:cap(buf)], make([]byte, min(cap(buf), total-cap(buf)))...)[:len(buf)]
		}
		got, err := io.ReadFull(r.src, buf[len(buf):min(cap(buf), total)])
		buf = buf[:len(buf)+got]
		if err != nil {
			r.big = buf
			r.pendType, r.pendTotal = t, total
			return 0, nil, &PartialError{Err: noEOF(err)}
		}
	}
	r.big = buf
	// Give back memory held for a rare huge message.
	if cap(r.big) > 1<<20 {
		r.big = nil
	}
	return t, buf, nil
}

// FillFrom reads once from src, the reader's socket read without blocking
// (an evloop.Sock), into the free part of the buffer, for an event loop
// that owns the socket. It reports how many bytes came and
// whether they filled all the room there was, in which case more may be
// waiting. It returns syscall.EAGAIN when there was nothing to read, io.EOF
// at the end of the stream, and reads nothing (0, true, nil) when the
// buffer is full, which happens only when the next frame does not fit it
// (Oversized).
func (r *Reader) FillFrom(src io.Reader) (n int, full bool, err error) {
	r.take()
	if r.r == r.w {
		r.r, r.w = 0, 0
	} else if r.r > 0 {
		r.w = copy(r.b, r.b[r.r:r.w])
		r.r = 0
	}
	room := len(r.b) - r.w
	if room == 0 {
		return 0, true, nil
	}
	n, err = src.Read(r.b[r.w:])
	switch {
	case err != nil:
		return 0, false, err
	case n == 0:
		return 0, false, io.EOF
	}
	r.w += n
	return n, n == room, nil
}

// Peek returns the next frame, as Next would, when it is wholly buffered,
// without taking it: the next Next returns it without reading.
func (r *Reader) Peek() (t byte, frame []byte, ok bool) {
	if r.pendTotal > 0 || r.w-r.r < headerBytes {
		return 0, nil, false
	}
	n := int(binary.BigEndian.Uint32(r.b[r.r+1:]))
	if n < 4 || n-4 > r.max || 1+n > r.w-r.r {
		return 0, nil, false
	}
	return r.b[r.r], r.b[r.r : r.r+1+n], true
}

// Oversized reports whether the next frame cannot come through the read
// buffer (it is larger, or its length is impossible, or a large frame is
// under way): only Next, reading as it goes, takes it.
func (r *Reader) Oversized() bool {
	if r.pendTotal > 0 {
		return true
	}
	if r.w-r.r < headerBytes {
		return false
	}
	n := int(binary.BigEndian.Uint32(r.b[r.r+1:]))
	return n < 4 || n-4 > r.max || 1+n > r.size
}

// Idle reports whether nothing of a next frame has been read yet.
func (r *Reader) Idle() bool { return r.r == r.w && r.pendTotal == 0 }

// Buffered reports how many bytes can be read without blocking.
func (r *Reader) Buffered() int { return r.w - r.r }

// HasFrame reports whether a whole frame is already buffered, so that Next
// will not block. When it is false, whatever was written in response to
// earlier frames should be flushed.
func (r *Reader) HasFrame() bool {
	if r.w-r.r < headerBytes {
		return false
	}
	return r.w-r.r >= 1+int(binary.BigEndian.Uint32(r.b[r.r+1:]))
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

// ReadyForQuery returns the frame of a ReadyForQuery message with status
// st. The caller must not modify it.
func ReadyForQuery(st byte) []byte {
	switch st {
	case TxIdle:
		return rfqIdle[:6:6]
	case TxActive:
		return rfqActive[:6:6]
	case TxFailed:
		return rfqFailed[:6:6]
	}
	return []byte{'Z', 0, 0, 0, 5, st}
}

// The usual ReadyForQuery frames, shared by every caller.
var (
	rfqIdle   = []byte{'Z', 0, 0, 0, 5, TxIdle}
	rfqActive = []byte{'Z', 0, 0, 0, 5, TxActive}
	rfqFailed = []byte{'Z', 0, 0, 0, 5, TxFailed}
)

// Transaction states carried by ReadyForQuery.
const (
	TxIdle   byte = 'I'
	TxActive byte = 'T'
	TxFailed byte = 'E'
)
