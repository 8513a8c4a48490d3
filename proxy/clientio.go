package proxy

import (
	"net"
	"syscall"
)

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
