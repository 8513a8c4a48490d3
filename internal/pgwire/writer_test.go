package pgwire

import (
	"bytes"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriterFlushesWhatDoesNotFitAndGivesItsBufferBack(t *testing.T) {
	var dst bytes.Buffer
	w := NewWriter(&dst, 16, true)
	_, err := w.Write([]byte("0123456789"))
	require.NoError(t, err)
	require.Zero(t, dst.Len(), "it fits: nothing is sent yet")
	_, err = w.Write([]byte("abcdefghij"))
	require.NoError(t, err)
	require.Equal(t, "0123456789", dst.String(), "the first write went out to make room")
	_, err = w.Write(bytes.Repeat([]byte("x"), 40)) // larger than the buffer: sent at once
	require.NoError(t, err)
	require.Equal(t, 60, dst.Len())
	require.Zero(t, w.Buffered())
	w.Append([]byte("tail"))
	require.NoError(t, w.Flush())
	require.Equal(t, 64, dst.Len())
	require.Nil(t, w.b, "an empty Writer that releases holds no buffer")
}

func TestWriterFlushToSendsWhatTheSocketTakesAndKeepsTheRest(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
	require.NoError(t, err)
	a := os.NewFile(uintptr(fds[0]), "a")
	b := os.NewFile(uintptr(fds[1]), "b")
	defer a.Close()
	defer b.Close()
	ca, err := net.FileConn(a)
	require.NoError(t, err)
	defer ca.Close()
	w := NewWriter(ca, 64, true)
	big := bytes.Repeat([]byte("y"), 8<<20)
	w.Append(big) // more than the socket's buffer holds
	n, all, err := w.FlushTo(fdRW(fds[0]))
	require.NoError(t, err)
	require.False(t, all)
	require.Positive(t, n)
	require.Equal(t, len(big)-n, w.Buffered())
	// Reading the other end makes room; the rest goes in more calls.
	got := n
	buf := make([]byte, 1<<20)
	for got < len(big) {
		for {
			m, err := syscall.Read(fds[1], buf)
			if err != nil || m <= 0 {
				break
			}
		}
		m, _, err := w.FlushTo(fdRW(fds[0]))
		require.NoError(t, err)
		got += m
	}
	require.Zero(t, w.Buffered())
	require.Nil(t, w.b)
}

func TestFillFromReadsWhatIsThereAndPeekShowsWholeFrames(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
	require.NoError(t, err)
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	r := NewReader(nil, 16, 1000)
	_, _, err = r.FillFrom(fdRW(fds[0]))
	require.ErrorIs(t, err, syscall.EAGAIN)

	q := []byte{'Q', 0, 0, 0, 7, 'a', 'b', 0}
	_, err = syscall.Write(fds[1], append(q, 'Q', 0, 0)) // a frame and the start of another
	require.NoError(t, err)
	n, full, err := r.FillFrom(fdRW(fds[0]))
	require.NoError(t, err)
	require.Equal(t, 11, n)
	require.False(t, full)
	typ, frame, ok := r.Peek()
	require.True(t, ok)
	require.Equal(t, byte('Q'), typ)
	require.Equal(t, q, frame)
	_, frame, err = r.Next()
	require.NoError(t, err)
	require.Equal(t, q, frame)
	_, _, ok = r.Peek()
	require.False(t, ok, "half a frame")
	require.False(t, r.Oversized())

	// A frame longer than the buffer is Next's, not the loop's.
	_, err = syscall.Write(fds[1], []byte{0, 40})
	require.NoError(t, err)
	_, _, err = r.FillFrom(fdRW(fds[0]))
	require.NoError(t, err)
	require.True(t, r.Oversized())

	syscall.Close(fds[1])
	_, _, err = r.FillFrom(fdRW(fds[0]))
	require.ErrorIs(t, err, io.EOF)
}

// fdRW reads and writes a non-blocking descriptor, as an evloop.Sock does.
type fdRW int

func (f fdRW) Read(b []byte) (int, error) {
	n, err := syscall.Read(int(f), b)
	if err != nil {
		return 0, err
	}
	return n, nil
}

func (f fdRW) Write(b []byte) (int, error) {
	n, err := syscall.Write(int(f), b)
	if err != nil {
		return 0, err
	}
	if n < len(b) {
		return n, syscall.EAGAIN
	}
	return n, nil
}
