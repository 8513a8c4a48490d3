// Package netpark watches idle sockets for readability with one epoll
// instance, so that a connection that sits idle needs no goroutine of its
// own.
//
// A Go program that serves each connection from a goroutine pays for that
// goroutine's stack (4 KiB or more once it has done real work) while the
// connection waits. A proxy holding ten thousand idle clients pays it ten
// thousand times. With a Parker, the goroutine hands its socket over
// (Park) and returns; when the socket becomes readable, or its peer hangs
// up, the Parker calls the wake function the goroutine left, which starts
// a fresh goroutine to serve it.
//
// # Concurrency
//
// A Parker is safe for concurrent use. One goroutine, started by New and
// stopped by Close, waits in epoll_wait and calls wake functions; a wake
// function must return quickly (start a goroutine, do not serve the
// connection on the Parker's goroutine).
//
// # What it does not do
//
// It does not read: the socket stays registered with Go's own poller too,
// and the woken goroutine reads it as usual. A socket must not be closed
// while it is parked: call Unpark first (the kernel would drop the closed
// socket from the epoll set on its own, but the Parker would keep its
// wake function). Linux only.
package netpark

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"
)

// ErrClosed is returned by Park after Close.
var ErrClosed = errors.New("netpark: parker closed")

// ID names one parked socket, for Unpark.
type ID uint64

type parked struct {
	fd   int
	wake func()
}

// Parker watches parked sockets; see the package comment.
type Parker struct {
	epfd int
	evfd int // eventfd that Close writes to stop the loop

	mu      sync.Mutex
	next    ID            // guarded by mu
	waiting map[ID]parked // guarded by mu
	closed  bool          // guarded by mu
	done    chan struct{} // closed when the loop has returned
	events  []syscall.EpollEvent
}

// New starts a Parker. Close stops it.
func New() (*Parker, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return nil, fmt.Errorf("eventfd2: %w", errno)
	}
	p := &Parker{epfd: epfd, evfd: int(evfd), next: 1, waiting: map[ID]parked{}, done: make(chan struct{}),
		events: make([]syscall.EpollEvent, 128)}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setID(&ev, 0) // ID 0 is the eventfd
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.evfd, &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p.evfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	go p.loop()
	return p, nil
}

// The epoll_event data field is 64 bits; Go's EpollEvent splits it in Fd
// and Pad. It carries the ID.
func setID(ev *syscall.EpollEvent, id ID) {
	*(*uint64)(unsafe.Pointer(&ev.Fd)) = uint64(id)
}

func eventID(ev *syscall.EpollEvent) ID {
	return ID(*(*uint64)(unsafe.Pointer(&ev.Fd)))
}

// Park hands raw's socket to the Parker: wake is called once, on the
// Parker's goroutine, when the socket has something to read, its peer
// hung up or failed, or the Parker closes. It must not block.
func (p *Parker) Park(raw syscall.RawConn, wake func()) (ID, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, ErrClosed
	}
	id := p.next
	p.next++
	var cerr error
	fd := -1
	err := raw.Control(func(s uintptr) {
		fd = int(s)
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
		setID(&ev, id)
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("netpark: %w", err)
	}
	p.waiting[id] = parked{fd: fd, wake: wake}
	return id, nil
}

// Unpark takes a parked socket back before its wake function was called,
// and reports whether it did; false means wake has been or is being
// called. The socket must still be open.
func (p *Parker) Unpark(id ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.waiting[id]
	if !ok {
		return false
	}
	delete(p.waiting, id)
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, w.fd, nil)
	return true
}

// Len reports how many sockets are parked.
func (p *Parker) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}

// Close wakes every socket still parked and stops the Parker. It is
// idempotent.
func (p *Parker) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.done
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	one := [8]byte{1}
	_, _ = syscall.Write(p.evfd, one[:])
	<-p.done
	return nil
}

func (p *Parker) loop() {
	defer close(p.done)
	for {
		n, err := syscall.EpollWait(p.epfd, p.events, -1)
		if err != nil && err != syscall.EINTR {
			break // cannot happen with a valid epoll fd; wake everyone below
		}
		stop := false
		p.mu.Lock()
		var wakes []func()
		for i := range max(n, 0) {
			id := eventID(&p.events[i])
			if id == 0 {
				stop = true
				continue
			}
			w, ok := p.waiting[id]
			if !ok {
				continue // unparked meanwhile
			}
			delete(p.waiting, id)
			_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, w.fd, nil)
			wakes = append(wakes, w.wake)
		}
		if stop {
			for id, w := range p.waiting {
				delete(p.waiting, id)
				_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, w.fd, nil)
				wakes = append(wakes, w.wake)
			}
		}
		p.mu.Unlock()
		for _, wake := range wakes {
			wake()
		}
		if stop {
			break
		}
	}
	p.mu.Lock()
	p.closed = true
	rest := p.waiting
	p.waiting = map[ID]parked{}
	p.mu.Unlock()
	for _, w := range rest {
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, w.fd, nil)
		w.wake()
	}
	syscall.Close(p.epfd)
	syscall.Close(p.evfd)
}
