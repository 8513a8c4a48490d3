// Package evloop runs an event loop: one goroutine that waits in
// epoll_wait for many non-blocking sockets and handles what they are ready
// for, with no goroutine per socket.
//
// A socket is registered once, edge-triggered, for reading, writing and
// hang-ups, and stays registered until it is closed or deregistered. Its
// Handler is called on the loop's goroutine with the events that came. With
// edge triggering a socket reports readiness once per change: a handler
// that stops reading before the kernel's buffer is empty (a read that
// filled the buffer it was given, or back-pressure) must remember to read
// again, since no new event comes for bytes already there. A short read
// means the buffer was emptied, and bytes that come later make a new
// event.
//
// A socket may also be read and written by other goroutines through Go's
// own poller (its net.Conn), when the program hands it over: the loop then
// still gets its events, and the handler is expected to ignore them while
// it does not own the socket.
//
// # Concurrency
//
// Register, Deregister and the handlers run on the loop's goroutine only:
// other goroutines ask it to run code with Post. Close is safe from any
// goroutine. After each round of events, and before it waits again, the
// loop calls the functions handlers gave to Defer, once per round: that is
// where writes that several events produced go out in one system call per
// socket.
//
// # What it does not do
//
// No timers, no accepting, no TLS: those stay on goroutines. Linux only.
package evloop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Events a handler gets.
const (
	In    uint32 = syscall.EPOLLIN
	Out   uint32 = syscall.EPOLLOUT
	Hup   uint32 = syscall.EPOLLHUP | syscall.EPOLLRDHUP
	Error uint32 = syscall.EPOLLERR
)

// edgeTriggered is EPOLLET as the uint32 of epoll_event (syscall's
// constant is a negative int).
const edgeTriggered = 1 << 31

// ErrClosed is returned by Post after Close.
var ErrClosed = errors.New("evloop: loop closed")

// Handler handles a registered socket's events, on the loop's goroutine.
type Handler interface {
	Event(events uint32)
}

// ID names a registered socket.
type ID uint64

// Loop is one epoll instance and its goroutine. See the package comment.
type Loop struct {
	epfd int
	evfd int // eventfd that Post and Close write to
	// ep is epfd as a file of Go's own poller, which the loop waits on when
	// nothing is ready (see run); waitFn polls epfd for it, into n.
	ep     *os.File
	epRaw  syscall.RawConn
	waitFn func(uintptr) bool
	n      int

	// Used by the loop's goroutine only:
	handlers map[ID]Handler
	next     ID
	events   []syscall.EpollEvent
	deferred []func()
	later    []func() // for the next round
	nowLater []func() // this round's, swapped with later
	running  []func() // tasks being run, swapped with tasks

	mu     sync.Mutex
	tasks  []func() // guarded by mu
	woken  bool     // guarded by mu; an eventfd write is on its way
	closed bool     // guarded by mu
	done   chan struct{}
}

// New starts a loop; Close stops it.
func New() (*Loop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return nil, fmt.Errorf("eventfd2: %w", errno)
	}
	l := &Loop{epfd: epfd, evfd: int(evfd), handlers: map[ID]Handler{}, next: 1,
		events: make([]syscall.EpollEvent, 256), done: make(chan struct{})}
	fail := func(err error) (*Loop, error) {
		if l.ep != nil {
			l.ep.Close()
		} else {
			syscall.Close(epfd)
		}
		syscall.Close(l.evfd)
		return nil, err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setID(&ev, 0) // ID 0 is the eventfd
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, l.evfd, &ev); err != nil {
		return fail(fmt.Errorf("epoll_ctl: %w", err))
	}
	// An epoll descriptor is readable while events are ready: Go's poller
	// waits for that, so that no thread of the loop's blocks in a system
	// call (and Go's own poller, which watches the sockets too, and the
	// loop's do not both wake for every event).
	if err := syscall.SetNonblock(epfd, true); err != nil {
		return fail(err)
	}
	l.ep = os.NewFile(uintptr(epfd), "epoll")
	if l.epRaw, err = l.ep.SyscallConn(); err != nil {
		return fail(err)
	}
	l.waitFn = l.poll
	go l.run()
	return l, nil
}

// poll is the function the loop gives the epoll descriptor's RawConn: it
// takes the ready events, and asks Go's poller to wait while there are
// none.
func (l *Loop) poll(uintptr) bool {
	l.n = wait(l.epfd, l.events)
	return l.n > 0
}

// The epoll_event data field is 64 bits; Go's EpollEvent splits it in Fd
// and Pad. It carries the ID.
func setID(ev *syscall.EpollEvent, id ID) {
	*(*uint64)(unsafe.Pointer(&ev.Fd)) = uint64(id)
}

func eventID(ev *syscall.EpollEvent) ID {
	return ID(*(*uint64)(unsafe.Pointer(&ev.Fd)))
}

// Register adds the non-blocking socket behind raw, edge-triggered, with h
// as its handler. It must be called on the loop's goroutine.
func (l *Loop) Register(raw syscall.RawConn, h Handler) (ID, error) {
	id := l.next
	l.next++
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | edgeTriggered}
	setID(&ev, id)
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		err = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("evloop: epoll_ctl add: %w", err)
	}
	l.handlers[id] = h
	return id, nil
}

// Deregister removes the socket registered as id, if it is still open
// (closing a socket takes it out of the epoll set on its own), and its
// handler; events already read for it are dropped. It must be called on
// the loop's goroutine.
func (l *Loop) Deregister(id ID, raw syscall.RawConn) {
	if _, ok := l.handlers[id]; !ok {
		return
	}
	delete(l.handlers, id)
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// Post runs f on the loop's goroutine, soon. It is safe from any goroutine,
// the loop's own included.
func (l *Loop) Post(f func()) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.tasks = append(l.tasks, f)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		l.wake()
	}
	return nil
}

// wake makes the loop's wait return: eventfd takes a native-endian
// 64-bit count.
func (l *Loop) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = syscall.Write(l.evfd, one[:])
}

// Defer runs f once the loop has handled the events of this round, before
// it waits again. It must be called on the loop's goroutine.
func (l *Loop) Defer(f func()) { l.deferred = append(l.deferred, f) }

// Later runs f in the next round, after its events, without waiting for
// any: for work a handler stops doing so that other sockets get their
// turn. It must be called on the loop's goroutine.
func (l *Loop) Later(f func()) { l.later = append(l.later, f) }

// Close stops the loop once the round under way is over. Tasks posted and
// not yet run are dropped; sockets stay open (their owners close them). It
// is idempotent.
func (l *Loop) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.wake()
	<-l.done
	return nil
}

func (l *Loop) run() {
	defer func() {
		l.ep.Close()
		syscall.Close(l.evfd)
		close(l.done)
	}()
	for {
		n := wait(l.epfd, l.events)
		if n == 0 && len(l.later) == 0 {
			if err := l.epRaw.Read(l.waitFn); err != nil {
				return // cannot happen while the loop holds ep open
			}
			n = l.n
		}
		woken := false
		for i := range n {
			ev := &l.events[i]
			id := eventID(ev)
			if id == 0 {
				woken = true
				continue
			}
			if h, ok := l.handlers[id]; ok {
				h.Event(ev.Events)
			}
		}
		if woken {
			var b [8]byte
			_, _ = syscall.Read(l.evfd, b[:])
			l.mu.Lock()
			closed := l.closed
			l.woken = false
			l.running, l.tasks = l.tasks, l.running[:0]
			l.mu.Unlock()
			if closed {
				return
			}
			for i, f := range l.running {
				f()
				l.running[i] = nil
			}
		}
		if len(l.later) > 0 {
			l.nowLater, l.later = l.later, l.nowLater[:0]
			for i, f := range l.nowLater {
				f()
				l.nowLater[i] = nil
			}
		}
		for i := 0; i < len(l.deferred); i++ { // a deferred function may defer another
			l.deferred[i]()
			l.deferred[i] = nil
		}
		l.deferred = l.deferred[:0]
	}
}

// wait takes the ready events from epfd without waiting.
func wait(epfd int, events []syscall.EpollEvent) int {
	r, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0 // EINTR
	}
	return int(r)
}

// Sock reads and writes a non-blocking socket with one system call each,
// never waiting. It goes through the socket's RawConn, which keeps the
// descriptor from being closed (and its number given to another socket)
// during a call; after Close, calls fail. It is not safe for concurrent
// use, and allocates nothing per call.
type Sock struct {
	raw     syscall.RawConn
	buf     []byte
	n       int
	errno   syscall.Errno
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool
}

// NewSock returns a Sock for the socket behind raw.
func NewSock(raw syscall.RawConn) *Sock {
	s := &Sock{raw: raw}
	s.readFn = s.read
	s.writeFn = s.write
	return s
}

// Raw returns the socket's RawConn.
func (s *Sock) Raw() syscall.RawConn { return s.raw }

// Read reads into b. It returns syscall.EAGAIN when there is nothing to
// read, and n 0 with a nil error at the end of the stream.
func (s *Sock) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	s.buf = b
	err := s.raw.Read(s.readFn)
	s.buf = nil
	if err != nil {
		return 0, err
	}
	if s.errno != 0 {
		return 0, s.errno
	}
	return s.n, nil
}

// Write writes b and returns how much the socket took: less than len(b),
// with syscall.EAGAIN, when its buffer is full.
func (s *Sock) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	s.buf = b
	err := s.raw.Write(s.writeFn)
	s.buf = nil
	if err != nil {
		return 0, err
	}
	if s.errno != 0 {
		return 0, s.errno
	}
	if s.n < len(b) {
		return s.n, syscall.EAGAIN
	}
	return s.n, nil
}

// read and write are the functions given to RawConn: they return true so
// that RawConn never waits.
func (s *Sock) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)))
		if errno == syscall.EINTR {
			continue
		}
		s.n, s.errno = int(n), errno
		return true
	}
}

func (s *Sock) write(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)))
		if errno == syscall.EINTR {
			continue
		}
		s.n, s.errno = int(n), errno
		if errno != 0 {
			s.n = 0
		}
		return true
	}
}
