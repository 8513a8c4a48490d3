package proxy

import (
	"bufio"
	"io"
	"net"
	"syscall"
)

// freeWriters holds the write buffers of clients that have nothing
// waiting to be sent: a bounded free list, which unlike a sync.Pool
// survives garbage collections.
var freeWriters = make(chan *bufio.Writer, 128)

func getWriter() *bufio.Writer {
	select {
	case w := <-freeWriters:
		return w
	default:
		return bufio.NewWriterSize(nil, clientWriteBufBytes)
	}
}

func putWriter(w *bufio.Writer) {
	w.Reset(nil)
	select {
	case freeWriters <- w:
	default:
	}
}

// clientWriter buffers what goes to a client. It takes a buffer from
// writerPool for the first write and gives it back once a Flush has sent
// everything, so an idle client holds none. It is guarded by session.wmu.
type clientWriter struct {
	dst io.Writer
	w   *bufio.Writer
}

func (c *clientWriter) Write(b []byte) (int, error) {
	if c.w == nil {
		c.w = getWriter()
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
	putWriter(c.w)
	c.w = nil
	return nil
}

// Discard drops what is buffered and not yet sent.
func (c *clientWriter) Discard() {
	if c.w != nil {
		putWriter(c.w)
		c.w = nil
	}
}

// rawConn returns nc's raw connection for pgwire.NewIdleReader, nil when
// nc is not a plain socket (TLS keeps buffers of its own anyway).
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
