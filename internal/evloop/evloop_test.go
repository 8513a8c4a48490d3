package evloop

import (
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns two connected non-blocking stream sockets, closed when the
// test ends.
func pair(t *testing.T) (a, b *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	a, b = os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func rawOf(t *testing.T, f *os.File) syscall.RawConn {
	t.Helper()
	raw, err := f.SyscallConn()
	require.NoError(t, err)
	return raw
}

func fdOf(t *testing.T, f *os.File) int {
	fd := -1
	require.NoError(t, rawOf(t, f).Control(func(s uintptr) { fd = int(s) }))
	return fd
}

type recorder struct {
	fd   int
	got  chan []byte
	hups atomic.Int32
}

func (r *recorder) Event(events uint32) {
	if events&In != 0 {
		var buf [64]byte
		for {
			n, err := syscall.Read(r.fd, buf[:])
			if err != nil || n == 0 {
				break
			}
			r.got <- append([]byte(nil), buf[:n]...)
			if n < len(buf) {
				break // a short read emptied the socket
			}
		}
	}
	if events&Hup != 0 {
		r.hups.Add(1)
	}
}

func onLoop(t *testing.T, l *Loop, f func()) {
	t.Helper()
	done := make(chan struct{})
	require.NoError(t, l.Post(func() { f(); close(done) }))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the posted task did not run")
	}
}

func TestARegisteredSocketIsReadOnTheLoopEachTimeBytesCome(t *testing.T) {
	l, err := New()
	require.NoError(t, err)
	defer l.Close()
	a, b := pair(t)
	r := &recorder{fd: fdOf(t, a), got: make(chan []byte, 16)}
	onLoop(t, l, func() {
		_, err := l.Register(rawOf(t, a), r)
		require.NoError(t, err)
	})
	for _, msg := range []string{"one", "two", "three"} {
		_, err := syscall.Write(fdOf(t, b), []byte(msg))
		require.NoError(t, err)
		select {
		case got := <-r.got:
			require.Equal(t, msg, string(got))
		case <-time.After(5 * time.Second):
			t.Fatalf("%q was not read", msg)
		}
	}
	b.Close()
	require.Eventually(t, func() bool { return r.hups.Load() > 0 }, 5*time.Second, time.Millisecond)
}

func TestDeferredFunctionsRunOnceARoundIsOver(t *testing.T) {
	l, err := New()
	require.NoError(t, err)
	defer l.Close()
	var order []string
	onLoop(t, l, func() {
		l.Defer(func() { order = append(order, "deferred") })
		order = append(order, "task")
	})
	onLoop(t, l, func() {}) // the next round: the first one's deferred function ran before it
	require.Equal(t, []string{"task", "deferred"}, order)
}

func TestADeregisteredSocketGetsNoMoreEvents(t *testing.T) {
	l, err := New()
	require.NoError(t, err)
	defer l.Close()
	a, b := pair(t)
	r := &recorder{fd: fdOf(t, a), got: make(chan []byte, 16)}
	var id ID
	onLoop(t, l, func() {
		id, err = l.Register(rawOf(t, a), r)
		require.NoError(t, err)
	})
	onLoop(t, l, func() { l.Deregister(id, rawOf(t, a)) })
	_, err = syscall.Write(fdOf(t, b), []byte("x"))
	require.NoError(t, err)
	onLoop(t, l, func() {})
	select {
	case <-r.got:
		t.Fatal("a deregistered socket was read")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestPostAfterCloseFails(t *testing.T) {
	l, err := New()
	require.NoError(t, err)
	require.NoError(t, l.Close())
	require.NoError(t, l.Close())
	require.ErrorIs(t, l.Post(func() {}), ErrClosed)
}

func TestASockReportsAFullSocketAndAnEmptyOne(t *testing.T) {
	a, _ := pair(t)
	s := NewSock(rawOf(t, a))
	big := make([]byte, 8<<20)
	n, err := s.Write(big)
	require.ErrorIs(t, err, syscall.EAGAIN)
	require.Positive(t, n)
	require.Less(t, n, len(big))
	n, err = s.Read(make([]byte, 10))
	require.ErrorIs(t, err, syscall.EAGAIN)
	require.Zero(t, n)
}

func TestLaterRunsInTheNextRoundWithoutAnEvent(t *testing.T) {
	l, err := New()
	require.NoError(t, err)
	defer l.Close()
	ran := make(chan int, 3)
	onLoop(t, l, func() {
		l.Later(func() {
			ran <- 1
			l.Later(func() { ran <- 2 }) // and one more round
		})
	})
	for want := 1; want <= 2; want++ {
		select {
		case got := <-ran:
			require.Equal(t, want, got)
		case <-time.After(5 * time.Second):
			t.Fatalf("later function %d did not run", want)
		}
	}
}
