package pool

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/kproxy/kproxy/internal/evloop"
)

// What an event loop needs of a pool and its connections (see package
// evloop and proxy's doc.go): taking an idle connection without waiting,
// the socket to register, and reads and writes that never block. While a
// loop holds a connection it is the connection's only reader and writer,
// as a goroutine holder would be.

// TryAcquire takes an idle connection without waiting and without
// dialling, or returns nil: the one that last served on loop home with
// settings settingsKey if there is one, else one with settingsKey, else
// any. Broken and expired idle connections it meets are closed.
func (p *Pool) TryAcquire(settingsKey string, home int) *Conn {
	now := time.Now()
	p.acquires.Add(1)
	p.mu.Lock()
	for len(p.idle) > 0 && !p.closed {
		i := len(p.idle) - 1
		best := 0
		for j := i; j >= 0; j-- {
			c := p.idle[j]
			rank := 0
			if c.settingsKey == settingsKey {
				rank = 2
				if c.home == home {
					rank = 3
				}
			}
			if rank > best {
				i, best = j, rank
				if rank == 3 {
					break
				}
			}
		}
		c := p.idle[i]
		p.idle = append(p.idle[:i], p.idle[i+1:]...)
		if c.broken || now.After(c.expiresAt) {
			p.open--
			p.mu.Unlock()
			p.closeConn(c)
			p.mu.Lock()
			continue
		}
		p.mu.Unlock()
		p.noteAcquired(c, now, now, now)
		return c
	}
	p.mu.Unlock()
	p.acquires.Add(-1) // not an acquisition: the caller waits for one elsewhere
	return nil
}

// SetHome records which event loop serves the connection now, for
// TryAcquire's preference.
func (c *Conn) SetHome(home int) { c.home = home }

// Sock returns what an event loop reads and writes the connection's
// socket with, or nil when it is not a plain socket (TLS): only a plain one
// is relayed on an event loop.
func (c *Conn) Sock() *evloop.Sock {
	if c.sock == nil && !c.notPlain {
		sc, ok := c.nc.(syscall.Conn)
		var raw syscall.RawConn
		var err error
		if ok && isPlain(c.nc) {
			raw, err = sc.SyscallConn()
		}
		if raw == nil || err != nil {
			c.notPlain = true
			return nil
		}
		c.sock = evloop.NewSock(raw)
	}
	return c.sock
}

func isPlain(nc net.Conn) bool {
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// LoopState returns what the event loop holding the connection keeps on it
// (nil until SetLoopState).
func (c *Conn) LoopState() any { return c.loopState }

// SetLoopState keeps s on the connection for event loops; onClose, if not
// nil, is called once the connection is closed, so that the loop can drop
// its registration.
func (c *Conn) SetLoopState(s any, onClose func()) { c.loopState, c.onClose = s, onClose }

// Fill reads once from the socket into the read buffer without blocking;
// see pgwire.Reader.FillFrom. An error other than syscall.EAGAIN marks the
// connection broken. Sock must have returned non-nil.
func (c *Conn) Fill() (n int, full bool, err error) {
	n, full, err = c.rd.FillFrom(c.sock)
	if err != nil && !errors.Is(err, syscall.EAGAIN) {
		c.broken = true
	}
	return n, full, err
}

// Peek returns the next message if it is wholly buffered, without taking
// it; Next then returns it without reading.
func (c *Conn) Peek() (t byte, msg []byte, ok bool) { return c.rd.Peek() }

// Oversized reports whether the next message is larger than the read
// buffer, so that only Next, which blocks, can take it.
func (c *Conn) Oversized() bool { return c.rd.Oversized() }

// Append buffers b for the server without sending it (FlushLoop sends it).
func (c *Conn) Append(b []byte) { c.wr.Append(b) }

// WriteBuffered reports how many bytes wait to be sent to the server.
func (c *Conn) WriteBuffered() int { return c.wr.Buffered() }

// FlushLoop sends what it can of what is buffered without blocking, and
// reports whether everything went. A write error marks the connection
// broken. Sock must have returned non-nil.
func (c *Conn) FlushLoop() (all bool, err error) {
	_, all, err = c.wr.FlushTo(c.sock)
	if err != nil {
		c.broken = true
	}
	return all, err
}
