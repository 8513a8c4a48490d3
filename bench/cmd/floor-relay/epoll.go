package main

import (
	"errors"
	"net"
	"syscall"
	"unsafe"
)

// econn is one socket of the epoll loop, owned by the loop's goroutine.
type econn struct {
	fd     int
	server bool
	peer   *econn // the other end of the transaction, nil when not in one
	scan   scanner
	events uint32 // what the fd is registered for

	out     []byte // bytes that wait for fd to be writable
	stalled *econn // the socket that stopped reading until out drains
	pending int    // client: round trips started and not answered yet
	waiting []byte // client: what it sent while no server was free
	closed  bool
}

// eloop is one epoll instance and the goroutine that waits on it: every
// socket of the relay is non-blocking and registered here, and nothing
// else reads or writes them.
type eloop struct {
	epfd, evfd int
	conns      map[int]*econn
	idle       []*econn // free server connections
	queue      []*econn // clients waiting for one
	incoming   chan int // greeted clients' fds, announced on evfd
	buf        []byte
	events     []syscall.EpollEvent
}

// serveEpoll runs one loop for every socket. Clients are greeted on a
// goroutine each, then their sockets move to the loop.
func serveEpoll(ln net.Listener, servers []net.Conn, params []byte) error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	evfd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		return errno
	}
	l := &eloop{epfd: epfd, evfd: int(evfd), conns: map[int]*econn{}, incoming: make(chan int, 1024),
		buf: make([]byte, bufSize), events: make([]syscall.EpollEvent, 256)}
	if err := l.register(&econn{fd: l.evfd}, syscall.EPOLLIN); err != nil {
		return err
	}
	for _, s := range servers {
		fd, err := takeFD(s)
		if err != nil {
			return err
		}
		c := &econn{fd: fd, server: true, scan: scanner{server: true}}
		if err := l.register(c, syscall.EPOLLIN); err != nil {
			return err
		}
		l.idle = append(l.idle, c)
	}
	go l.run()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			if !greet(c, params) {
				c.Close()
				return
			}
			fd, err := takeFD(c)
			if err != nil {
				return
			}
			l.incoming <- fd
			one := [8]byte{7: 1}
			syscall.Write(l.evfd, one[:])
		}()
	}
}

// takeFD returns a non-blocking duplicate of c's socket and closes c, so
// that Go's own poller no longer watches it.
func takeFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if cerr := raw.Control(func(s uintptr) { fd, err = syscall.Dup(int(s)) }); cerr != nil {
		return -1, cerr
	}
	c.Close()
	if err != nil {
		return -1, err
	}
	syscall.CloseOnExec(fd)
	return fd, syscall.SetNonblock(fd, true)
}

func (l *eloop) register(c *econn, events uint32) error {
	ev := syscall.EpollEvent{Events: events, Fd: int32(c.fd)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		return err
	}
	c.events = events
	l.conns[c.fd] = c
	return nil
}

func (l *eloop) setEvents(c *econn, events uint32) {
	if c.closed || c.events == events {
		return
	}
	ev := syscall.EpollEvent{Events: events, Fd: int32(c.fd)}
	syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev)
	c.events = events
}

func (l *eloop) run() {
	for {
		// Poll without blocking first: under load there is nearly always
		// something ready, and a blocking call hands the goroutine's P back
		// to the scheduler and takes it again.
		n := epollWait(l.epfd, l.events, true)
		if n == 0 {
			n = epollWait(l.epfd, l.events, false)
		}
		for i := range n {
			ev := &l.events[i]
			c := l.conns[int(ev.Fd)]
			if c == nil || c.closed {
				continue
			}
			switch {
			case c.fd == l.evfd:
				l.accept()
				continue
			case ev.Events&syscall.EPOLLOUT != 0:
				l.drain(c)
			}
			if !c.closed && ev.Events&(syscall.EPOLLIN|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 && c.events&syscall.EPOLLIN != 0 {
				if c.server {
					l.serverReadable(c)
				} else {
					l.clientReadable(c)
				}
			}
		}
	}
}

func epollWait(epfd int, events []syscall.EpollEvent, poll bool) int {
	var r uintptr
	var errno syscall.Errno
	if poll {
		r, _, errno = syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	} else {
		r, _, errno = syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
	}
	if errno != 0 {
		return 0
	}
	return int(r)
}

// read and write are raw system calls: the sockets are non-blocking, so
// they never block, and need not tell the scheduler.
func read(fd int, b []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}

func write(fd int, b []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}

func (l *eloop) accept() {
	var b [8]byte
	read(l.evfd, b[:])
	for {
		select {
		case fd := <-l.incoming:
			if l.register(&econn{fd: fd}, syscall.EPOLLIN) != nil {
				syscall.Close(fd)
			}
		default:
			return
		}
	}
}

func (l *eloop) clientReadable(c *econn) {
	n, errno := read(c.fd, l.buf)
	if errno == syscall.EAGAIN {
		return
	}
	if errno != 0 || n == 0 {
		l.close(c)
		return
	}
	ends, _, terminate := c.scan.feed(l.buf[:n])
	if terminate {
		l.close(c)
		return
	}
	c.pending += ends
	for len(l.idle) > 0 && l.idle[len(l.idle)-1].closed {
		l.idle = l.idle[:len(l.idle)-1]
	}
	if c.peer == nil {
		if len(l.idle) == 0 {
			c.waiting = append(c.waiting, l.buf[:n]...)
			l.queue = append(l.queue, c)
			l.setEvents(c, 0) // read nothing more until a server is free
			return
		}
		s := l.idle[len(l.idle)-1]
		l.idle = l.idle[:len(l.idle)-1]
		c.peer, s.peer = s, c
	}
	l.send(c, c.peer, l.buf[:n])
}

func (l *eloop) serverReadable(s *econn) {
	n, errno := read(s.fd, l.buf)
	if errno == syscall.EAGAIN {
		return
	}
	c := s.peer
	if errno != 0 || n == 0 || c == nil {
		l.close(s) // gone, or talking out of turn
		return
	}
	z, status, _ := s.scan.feed(l.buf[:n])
	l.send(s, c, l.buf[:n])
	c.pending -= z
	if z > 0 && c.pending <= 0 && status == 'I' {
		c.pending = 0
		l.release(s)
	}
}

// send writes b to dst; what does not fit waits in dst.out, and src reads
// nothing more until it has gone.
func (l *eloop) send(src, dst *econn, b []byte) {
	if dst.closed {
		return
	}
	if len(dst.out) == 0 {
		n, errno := write(dst.fd, b)
		if errno != 0 && errno != syscall.EAGAIN {
			l.close(dst)
			return
		}
		if n == len(b) {
			return
		}
		b = b[max(n, 0):]
	}
	dst.out = append(dst.out, b...)
	dst.stalled = src
	l.setEvents(dst, dst.events|syscall.EPOLLOUT)
	l.setEvents(src, src.events&^syscall.EPOLLIN)
}

// drain writes what waits in c.out, and lets the stalled side read again
// once it has all gone.
func (l *eloop) drain(c *econn) {
	for len(c.out) > 0 {
		n, errno := write(c.fd, c.out)
		if errno == syscall.EAGAIN {
			return
		}
		if errno != 0 {
			l.close(c)
			return
		}
		c.out = c.out[n:]
	}
	c.out = nil
	l.setEvents(c, c.events&^syscall.EPOLLOUT)
	if s := c.stalled; s != nil {
		c.stalled = nil
		l.setEvents(s, s.events|syscall.EPOLLIN)
	}
}

// release ends s's transaction and lends s to the next waiting client.
func (l *eloop) release(s *econn) {
	c := s.peer
	c.peer, s.peer = nil, nil
	if c.stalled == s {
		c.stalled = nil
	}
	l.setEvents(s, s.events|syscall.EPOLLIN)
	for len(l.queue) > 0 {
		next := l.queue[0]
		l.queue = l.queue[1:]
		if next.closed {
			continue
		}
		next.peer, s.peer = s, next
		b := next.waiting
		next.waiting = nil
		l.setEvents(next, next.events|syscall.EPOLLIN)
		l.send(next, s, b)
		return
	}
	l.idle = append(l.idle, s)
}

// close closes c; a transaction it was in ends with it, and so does the
// server connection, whose state is then unknown.
func (l *eloop) close(c *econn) {
	if c.closed {
		return
	}
	c.closed = true
	syscall.Close(c.fd) // also drops it from the epoll set
	delete(l.conns, c.fd)
	if p := c.peer; p != nil {
		c.peer, p.peer = nil, nil
		l.close(p)
	}
}
