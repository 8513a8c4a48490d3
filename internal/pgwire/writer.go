package pgwire

import (
	"io"
	"syscall"
)

// Writer buffers what goes to one socket. Write and Flush block like a
// bufio.Writer's, for a goroutine that owns the socket; Append and FlushTo
// never block, for an event loop that owns it (see package evloop): Append
// lets the buffer grow past its size, and the loop bounds it by reading no
// more from the other side while Buffered is high. The buffer comes from a
// free list at the first write and, when the Writer releases, goes back
// once a flush has sent everything, so an idle socket holds none. It is not
// safe for concurrent use.
type Writer struct {
	dst     io.Writer
	size    int
	release bool
	b       []byte // nil while empty, when release is set
}

// NewWriter returns a Writer to dst whose buffer holds size bytes before a
// Write flushes it. With release, the buffer goes back to the free list
// whenever it is empty after a flush.
func NewWriter(dst io.Writer, size int, release bool) *Writer {
	w := &Writer{}
	w.Init(dst, size, release)
	return w
}

// Init makes w a Writer as NewWriter describes, for a Writer held by
// value. Anything buffered is dropped.
func (w *Writer) Init(dst io.Writer, size int, release bool) {
	w.Discard()
	*w = Writer{dst: dst, size: size, release: release}
}

func (w *Writer) take() {
	if w.b == nil {
		w.b = getBuf(w.size)[:0]
	}
}

// Write buffers p, first sending what is buffered when p does not fit; a
// p larger than the buffer is sent at once. It blocks while it sends.
func (w *Writer) Write(p []byte) (int, error) {
	w.take()
	if len(w.b)+len(p) > cap(w.b) {
		if err := w.flush(); err != nil {
			return 0, err
		}
		if len(p) >= w.size {
			return w.dst.Write(p)
		}
		w.take()
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

// Append buffers p without sending anything, growing the buffer if need
// be.
func (w *Writer) Append(p []byte) {
	w.take()
	w.b = append(w.b, p...)
}

// Buffered reports how many bytes wait to be sent.
func (w *Writer) Buffered() int { return len(w.b) }

// Flush sends what is buffered, blocking until it has gone.
func (w *Writer) Flush() error {
	if err := w.flush(); err != nil {
		return err
	}
	w.done()
	return nil
}

func (w *Writer) flush() error {
	if len(w.b) == 0 {
		return nil
	}
	_, err := w.dst.Write(w.b)
	if err != nil {
		return err
	}
	w.b = w.b[:0]
	return nil
}

// FlushTo sends what it can of what is buffered with one call of dst, the
// Writer's socket written without blocking (an evloop.Sock), and returns
// how many bytes went and whether everything did. The rest waits for the
// next FlushTo (once the socket is writable again) or Flush.
func (w *Writer) FlushTo(dst io.Writer) (n int, all bool, err error) {
	if len(w.b) == 0 {
		w.done()
		return 0, true, nil
	}
	n, err = dst.Write(w.b)
	if n == len(w.b) {
		w.b = w.b[:0]
		w.done()
		return n, true, nil
	}
	if err == syscall.EAGAIN {
		err = nil
	}
	if n > 0 {
		w.b = w.b[:copy(w.b, w.b[n:])]
	}
	return n, false, err
}

// done gives an empty buffer back when the Writer releases; one that
// grew past its size is left to the garbage collector.
func (w *Writer) done() {
	if !w.release || w.b == nil || len(w.b) > 0 {
		return
	}
	if cap(w.b) == w.size {
		putBuf(w.b)
	}
	w.b = nil
}

// Discard drops what is buffered and not yet sent.
func (w *Writer) Discard() {
	if w.b != nil {
		w.b = w.b[:0]
		w.done()
	}
}
