package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

// The fuzz targets send arbitrary bytes to a running kproxy, before and
// after login. Whatever comes back must be well-formed backend messages with
// every error carrying a SQLSTATE, and kproxy must go on serving clients and
// leave no session or server connection behind.

// aliveEvery is how many fuzz inputs pass between checks that the proxy
// still serves clients.
const aliveEvery = 100

func FuzzStartupPacket(f *testing.F) {
	login := startupPacket(3<<16, "user", "postgres", "database", "postgres")
	ssl := startupPacket(80877103)
	for _, seed := range [][]byte{
		login,
		concat(login, encode(f, &pgproto3.Query{String: "SELECT 1"}), encode(f, &pgproto3.Terminate{})),
		ssl,
		concat(ssl, login),
		concat(ssl, ssl),
		startupPacket(80877104), // GSSENCRequest
		concat(startupPacket(80877102), []byte{0, 0, 0, 1, 0, 0, 0, 2}), // CancelRequest with a key nobody has
		startupPacket(80877102),                                   // CancelRequest without a key
		startupPacket(2<<16, "user", "postgres"),                  // protocol 2.0
		startupPacket(3<<16+1, "user", "postgres", "_pq_.x", "1"), // protocol 3.1 with an option
		startupPacket(3<<16, "database", "postgres"),              // no user
		startupPacket(3<<16, "user", "postgres", "database", "fuzz_no_such_db"),
		startupPacket(3<<16, "user", "postgres", "replication", "true"),
		startupPacket(3<<16, "user", "postgres", "options", "-c statement_timeout=1s --search_path=public"),
		startupPacket(3<<16, "user", "postgres", "options", "-x"),
		login[:len(login)-3],     // truncated
		{0x7f, 0xff, 0xff, 0xff}, // huge length
		{0, 0, 0, 7, 0, 3, 0, 0}, // length below eight
		{0, 0, 0, 0},
		{},
	} {
		f.Add(seed)
	}
	p := fuzzProxy(f)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, in []byte) {
		nc, err := net.Dial("tcp", p.Addr)
		require.NoError(t, err)
		resp := exchange(t, nc, in)
		// 'N' alone declines an SSLRequest or GSSENCRequest.
		requireBackendMessages(t, bytes.TrimLeft(resp, "N"))
		if n.Add(1)%aliveEvery == 0 {
			requireProxyServes(t, p)
		}
	})
}

func FuzzClientMessages(f *testing.F) {
	for _, msgs := range [][]pgproto3.FrontendMessage{
		{&pgproto3.Query{String: "SELECT 1"}},
		{&pgproto3.Query{String: "SELECT 1/0; SELECT 2"}, &pgproto3.Query{String: ""}},
		{&pgproto3.Query{String: "BEGIN; SELECT 1"}},
		{&pgproto3.Parse{Query: "SELECT $1::int"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "fuzz_stmt", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "fuzz_stmt"},
			&pgproto3.Execute{MaxRows: 1}, &pgproto3.Close{ObjectType: 'S', Name: "fuzz_stmt"}, &pgproto3.Flush{}},
		{&pgproto3.Parse{Query: "SELEC"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "COPY (SELECT 1) TO STDOUT"}},
		{&pgproto3.Query{String: "CREATE TEMP TABLE fuzz_copy (a text); COPY fuzz_copy FROM STDIN"},
			&pgproto3.CopyData{Data: []byte("x\n")}, &pgproto3.CopyDone{}, &pgproto3.Query{String: "SELECT * FROM fuzz_copy"}},
		{&pgproto3.Query{String: "CREATE TEMP TABLE fuzz_copy (a text); COPY fuzz_copy FROM STDIN"},
			&pgproto3.CopyFail{Message: "no"}},
		{&pgproto3.CopyData{Data: []byte("stray")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}},
		{&pgproto3.FunctionCall{Function: int4plOID, ArgFormatCodes: []uint16{1},
			Arguments: [][]byte{{0, 0, 0, 1}, {0, 0, 0, 2}}, ResultFormatCode: 1}},
		{&pgproto3.Terminate{}, &pgproto3.Query{String: "SELECT 1"}},
	} {
		var b []byte
		for _, m := range msgs {
			b = append(b, encode(f, m)...)
		}
		f.Add(b)
	}
	f.Add([]byte{'y', 0, 0, 0, 4})             // unknown type
	f.Add([]byte{'p', 0, 0, 0, 5, 0})          // password message after login
	f.Add([]byte{'Q', 0, 0, 0, 2})             // length below four
	f.Add([]byte{'Q', 0x7f, 0xff, 0xff, 0xff}) // huge length
	f.Add([]byte{'Q', 0, 0, 0, 20, 'S', 'E'})  // truncated
	f.Add(startupPacket(3<<16, "user", "postgres"))

	p := fuzzProxy(f)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, in []byte) {
		nc, _ := rawStartup(t, p)
		requireBackendMessages(t, exchange(t, nc, in))
		if n.Add(1)%aliveEvery == 0 {
			requireProxyServes(t, p)
		}
	})
}

// fuzzProxy starts the kproxy a fuzz target sends its inputs to: one for
// each fuzzing process. It checks at the end that the proxy still serves.
func fuzzProxy(f *testing.F) *testProxy {
	p := startProxy(f, func(c *config.Config) {
		transactionMode(4)(c)
		c.Pool.AcquireTimeout = 200 * time.Millisecond
		c.MaxMessageBytes = 1 << 16
	})
	f.Cleanup(func() { requireProxyServes(f, p) }) // before startProxy's cleanup stops it
	return p
}

// exchange writes in to nc, closes nc's write side and returns what comes
// back within a second. nc is closed when the test ends.
func exchange(t *testing.T, nc net.Conn, in []byte) []byte {
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(time.Second)))
	// kproxy may close the connection before reading everything; what it
	// answered until then is still worth checking.
	if _, err := nc.Write(in); err == nil {
		_ = nc.(*net.TCPConn).CloseWrite()
	}
	resp, _ := io.ReadAll(nc)
	return resp
}

// requireBackendMessages checks that b is a sequence of backend messages,
// possibly cut short at the end, and that every error has a SQLSTATE.
func requireBackendMessages(t *testing.T, b []byte) {
	t.Helper()
	if len(b) > 0 && b[0] == 'E' {
		require.GreaterOrEqual(t, len(b), 5, "response %q", b)
		n := int(binary.BigEndian.Uint32(b[1:5]))
		require.GreaterOrEqual(t, len(b), 1+n, "ErrorResponse cut short: %q", b)
		var e pgproto3.ErrorResponse
		require.NoError(t, e.Decode(b[5:1+n]), "response %q", b)
	}
	fe := pgproto3.NewFrontend(bytes.NewReader(b), io.Discard)
	for {
		msg, err := fe.Receive()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return
		}
		require.NoError(t, err, "response %q", b)
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			require.Len(t, e.Code, 5, "SQLSTATE of %+v", e)
			require.NotEmpty(t, e.Severity)
			require.NotEmpty(t, e.Message)
		}
	}
}

// requireProxyServes checks that p still logs a client in and answers it,
// and that once the client leaves no session or server connection is left
// in use.
func requireProxyServes(tb testing.TB, p *testProxy) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tryConnect(p.DSN("postgres", "postgres", ""))
	require.NoError(tb, err)
	var one int
	require.NoError(tb, conn.QueryRow(ctx, "SELECT 1").Scan(&one))
	require.NoError(tb, conn.Close(ctx))
	require.Eventually(tb, func() bool {
		if p.Server.Stats().Clients > 0 {
			return false
		}
		for _, st := range p.Cluster.Stats() {
			if st.Active > 0 || st.Waiting > 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "sessions or server connections left in use: %+v", p.Server.Stats())
}

// startupPacket returns an untyped startup-phase packet with the given
// protocol code and name/value parameters.
func startupPacket(code uint32, params ...string) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[4:], code)
	if len(params) > 0 {
		for _, s := range params {
			b = append(append(b, s...), 0)
		}
		b = append(b, 0)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func encode(tb testing.TB, m pgproto3.FrontendMessage) []byte {
	b, err := m.Encode(nil)
	require.NoError(tb, err)
	return b
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
