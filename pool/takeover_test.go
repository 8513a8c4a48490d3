package pool

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTakeOverEndsAPendingReadSoThatTheNextAnswerReachesKproxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(t, err)
	defer server.Close()

	dc := &dialedConn{Conn: client}
	// A background read left pending by the connection library.
	stolen := make(chan int, 1)
	go func() {
		n, _ := dc.Read(make([]byte, 64))
		stolen <- n
	}()
	require.Eventually(t, func() bool { return dc.reads.Load() == 1 }, 5*time.Second, time.Millisecond)

	nc, err := takeOver(dc)
	require.NoError(t, err)
	require.Equal(t, 0, <-stolen, "the pending read ended with nothing")
	n, err := dc.Read(make([]byte, 8))
	require.ErrorIs(t, err, errTakenOver, "later reads through the wrapper fail")
	require.Zero(t, n)

	_, err = server.Write([]byte("answer"))
	require.NoError(t, err)
	buf := make([]byte, 6)
	_, err = nc.Read(buf)
	require.NoError(t, err, "the deadline is cleared")
	require.Equal(t, "answer", string(buf))
}
