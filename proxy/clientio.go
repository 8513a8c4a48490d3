package proxy

import (
	"bufio"
	"io"
	"net"
	"sync"
	"syscall"
)

// writerPool holds the write buffers of clients that have nothing waiting
// to be sent.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, clientWriteBufBytes) }}

// clientWriter buffers what goes to a client. It takes a buffer from
// writerPool for the first write and gives it back once a Flush has sent
// everything, so an idle client holds none. It is guarded by session.wmu.
type clientWriter struct {
	dst io.Writer
	w   *bufio.Writer
}

func (c *clientWriter) Write(b []byte) (int, error) {
	if c.w == nil {
		c.w = writerPool.Get().(*bufio.Writer)
		c.w.Reset(c.dst)
	}
	return c.w.Write(b)
}

// Flush sends what is buffered and gives the buffer back.
func (c *clientWriter) Flush() error {
	if c.w == nil {
		return nil
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	c.w.Reset(nil)
	writerPool.Put(c.w)
	c.w = nil
	return nil
}

// Discard drops what is buffered and not yet sent.
func (c *clientWriter) Discard() {
	if c.w != nil {
		c.w.Reset(nil)
		writerPool.Put(c.w)
		c.w = nil
	}
}

// readableWait returns a function that blocks until nc has bytes to read,
// without reading them, for pgwire.NewIdleReader; nil when nc is not a
// plain socket (TLS keeps its own buffers anyway).
func readableWait(nc net.Conn) func() error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var one [1]byte
	ready := func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// EAGAIN: nothing yet, let the poller wait. Anything else (bytes,
		// end of stream, an error) is for the read that follows.
		return err != syscall.EAGAIN
	}
	return func() error { return rc.Read(ready) }
}
