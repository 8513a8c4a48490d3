package netpark_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/kproxy/kproxy/internal/netpark"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	s, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(); s.Close() })
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

func raw(t *testing.T, c *net.TCPConn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	return rc
}

// newParker returns a Parker closed when the test ends.
func newParker(t *testing.T) *netpark.Parker {
	t.Helper()
	p, err := netpark.New()
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func woken(ch chan struct{}, within time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(within):
		return false
	}
}

func TestAParkedSocketIsWokenWhenDataArrivesAndStillReadsIt(t *testing.T) {
	p := newParker(t)
	s, c := pair(t)
	var err error
	wake := make(chan struct{}, 1)
	_, err = p.Park(raw(t, s), func() { wake <- struct{}{} })
	require.NoError(t, err)
	require.Equal(t, 1, p.Len())
	require.False(t, woken(wake, 50*time.Millisecond), "woken with nothing to read")

	_, err = c.Write([]byte("hello"))
	require.NoError(t, err)
	require.True(t, woken(wake, 5*time.Second))
	require.Equal(t, 0, p.Len())
	buf := make([]byte, 5)
	_, err = s.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf))

	// It can be parked again: the first registration is gone.
	_, err = p.Park(raw(t, s), func() { wake <- struct{}{} })
	require.NoError(t, err)
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	require.True(t, woken(wake, 5*time.Second))
}

func TestDataThatArrivedBeforeParkingWakesAtOnce(t *testing.T) {
	p := newParker(t)
	s, c := pair(t)
	var err error
	_, err = c.Write([]byte("early"))
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond)
	wake := make(chan struct{}, 1)
	_, err = p.Park(raw(t, s), func() { wake <- struct{}{} })
	require.NoError(t, err)
	require.True(t, woken(wake, 5*time.Second))
}

func TestAPeerThatHangsUpWakesTheSocket(t *testing.T) {
	p := newParker(t)
	s, c := pair(t)
	var err error
	wake := make(chan struct{}, 1)
	_, err = p.Park(raw(t, s), func() { wake <- struct{}{} })
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.True(t, woken(wake, 5*time.Second))
}

func TestAnUnparkedSocketIsNotWoken(t *testing.T) {
	p := newParker(t)
	s, c := pair(t)
	var err error
	wake := make(chan struct{}, 1)
	id, err := p.Park(raw(t, s), func() { wake <- struct{}{} })
	require.NoError(t, err)
	require.True(t, p.Unpark(id))
	require.False(t, p.Unpark(id), "a second Unpark finds nothing")
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	require.False(t, woken(wake, 100*time.Millisecond))
}

func TestCloseWakesEverySocketStillParkedAndRefusesMore(t *testing.T) {
	p, err := netpark.New()
	require.NoError(t, err)
	const n = 50
	wake := make(chan struct{}, n)
	for range n {
		s, _ := pair(t)
		_, err := p.Park(raw(t, s), func() { wake <- struct{}{} })
		require.NoError(t, err)
	}
	require.NoError(t, p.Close())
	require.Len(t, wake, n)
	require.NoError(t, p.Close(), "Close is idempotent")
	s, _ := pair(t)
	_, err = p.Park(raw(t, s), func() {})
	require.ErrorIs(t, err, netpark.ErrClosed)
}
