package pool

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Taking a connection over from pgconn.
//
// pgconn reads through a background reader, which it starts when a write
// takes longer than a few milliseconds (so that a server blocked on a full
// send buffer cannot deadlock the client). When the server answers before
// such a slow write returns, the background reader goes on to read again,
// and that read is still pending when the connection is established and
// hijacked. It would take the answer to kproxy's first message, and that
// answer would be lost with the background reader's buffer: the holder
// waits for it forever. Every connection is therefore dialled through a
// dialedConn that counts the reads in flight, and takeOver ends any that
// is pending before kproxy reads.

// errTakenOver fails pgconn's reads once kproxy owns the socket.
var errTakenOver = errors.New("connection taken over by kproxy")

// takeOverWait bounds the wait for a pending background read to end.
const takeOverWait = 5 * time.Second

// dialedConn is a socket as dialled for pgconn, counting reads in flight.
type dialedConn struct {
	net.Conn
	reads    atomic.Int32
	detached atomic.Bool
}

func (c *dialedConn) Read(b []byte) (int, error) {
	c.reads.Add(1)
	defer c.reads.Add(-1)
	if c.detached.Load() {
		return 0, errTakenOver
	}
	return c.Conn.Read(b)
}

// takeOver returns the connection kproxy reads and writes from hj, a
// hijacked pgconn connection (the dialedConn itself, or TLS over it), once
// no read of pgconn's is pending. A plain socket is unwrapped, and later
// reads through the wrapper fail without touching it. With TLS the
// wrapper stays under the TLS layer; a pending read is ended the same way.
func takeOver(hj net.Conn) (net.Conn, error) {
	use := hj
	dc, plain := hj.(*dialedConn)
	if plain {
		dc.detached.Store(true)
		use = dc.Conn
	} else if tc, ok := hj.(interface{ NetConn() net.Conn }); ok {
		dc, _ = tc.NetConn().(*dialedConn)
	}
	if dc == nil || dc.reads.Load() == 0 {
		return use, nil
	}
	// A read is pending: no answer is due, so a deadline in the past ends
	// it with nothing read. The deadline stays until it has returned: a
	// read woken by it but not yet run would otherwise wait on.
	if err := dc.Conn.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(takeOverWait)
	for dc.reads.Load() > 0 {
		if time.Now().After(deadline) {
			return nil, errors.New("a read of the connection library did not end")
		}
		time.Sleep(100 * time.Microsecond)
	}
	return use, dc.Conn.SetReadDeadline(time.Time{})
}
