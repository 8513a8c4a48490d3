package proxy_test

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

func requireSQLState(t *testing.T, err error, code string) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, "want SQLSTATE %s, got %v", code, err)
	assert.Equal(t, code, pgErr.Code, "message: %s", pgErr.Message)
	return pgErr
}

func tryConnect(dsn string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn)
}

func TestUnknownDatabaseIsReportedAs3D000(t *testing.T) {
	p := startProxy(t, nil)
	_, err := tryConnect(p.DSN("postgres", "kproxy_no_such_db", ""))
	pgErr := requireSQLState(t, err, "3D000")
	assert.Contains(t, pgErr.Message, "kproxy_no_such_db")
}

func TestUnreachableBackendIsReportedAs08006(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())
	p := startProxy(t, func(c *config.Config) {
		b, err := config.ParseBackend(dead)
		require.NoError(t, err)
		c.Primary = b
	})
	_, err = tryConnect(p.DSN("postgres", "postgres", ""))
	pgErr := requireSQLState(t, err, "08006")
	assert.Contains(t, pgErr.Message, "could not connect to the server at "+dead)
}

func TestAcquireTimeoutIsReportedAs53300AndTheClientCarriesOn(t *testing.T) {
	p := startProxy(t, func(c *config.Config) {
		c.PoolMode = config.PoolModeTransaction
		c.Pool.MaxConnections = 1
		c.Pool.AcquireTimeout = 300 * time.Millisecond
	})
	ctx := context.Background()
	holder := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	waiter := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)

	_, err = waiter.Exec(ctx, "SELECT 1")
	pgErr := requireSQLState(t, err, "53300")
	assert.Contains(t, pgErr.Message, "no server connection")
	_, err = waiter.Exec(ctx, "SELECT $1::int", 1) // extended protocol too
	requireSQLState(t, err, "53300")

	require.NoError(t, tx.Commit(ctx))
	var one int
	require.NoError(t, waiter.QueryRow(ctx, "SELECT $1::int", 1).Scan(&one))
	assert.Equal(t, 1, one)
	assert.EqualValues(t, 2, p.Cluster.Stats()[0].AcquireTimeouts)
}

// rawStartup opens a plain connection to the proxy and logs in as postgres
// with trust, returning the connection after the first ReadyForQuery.
func rawStartup(t *testing.T, p *testProxy) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	nc, err := net.Dial("tcp", p.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	require.NoError(t, fe.Flush())
	for {
		msg, err := fe.Receive()
		require.NoError(t, err)
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return nc, fe
		}
	}
}

// receiveError reads until an ErrorResponse and returns it.
func receiveError(t *testing.T, fe *pgproto3.Frontend) *pgproto3.ErrorResponse {
	t.Helper()
	for {
		msg, err := fe.Receive()
		require.NoError(t, err)
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			return e
		}
	}
}

func TestProtocolViolationsGetAnErrorResponseAndAClosedConnection(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.MaxMessageBytes = 1 << 20 })
	tests := []struct {
		name string
		raw  []byte
	}{
		{"unknown message type", []byte{'y', 0, 0, 0, 4}},
		{"length below four", []byte{'Q', 0, 0, 0, 2}},
		{"message over max_message_bytes", []byte{'Q', 0x7f, 0xff, 0xff, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, fe := rawStartup(t, p)
			_, err := nc.Write(tt.raw)
			require.NoError(t, err)
			e := receiveError(t, fe)
			assert.Equal(t, "08P01", e.Code)
			assert.Equal(t, "FATAL", e.Severity)
			_, err = fe.Receive()
			assert.Error(t, err, "connection should be closed")
		})
	}
}

func TestMalformedStartupPacketsGetAnErrorResponse(t *testing.T) {
	p := startProxy(t, nil)
	startup := func(version uint32, params ...string) []byte {
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b[4:], version)
		for _, s := range params {
			b = append(b, s...)
			b = append(b, 0)
		}
		b = append(b, 0)
		binary.BigEndian.PutUint32(b, uint32(len(b)))
		return b
	}
	tests := []struct {
		name string
		raw  []byte
		code string
	}{
		{"protocol 2.0", startup(2 << 16), "08P01"},
		{"no user", startup(3<<16, "database", "postgres"), "28000"},
		{"unterminated parameter", append(startup(3<<16, "user", "postgres")[:14], 'x'), "08P01"},
		{"oversized packet", []byte{0, 1, 0, 0, 0, 3, 0, 0}, "08P01"},
		{"replication", startup(3<<16, "user", "postgres", "replication", "database"), "0A000"},
		{"bad options", startup(3<<16, "user", "postgres", "options", "-x"), "08P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", p.Addr)
			require.NoError(t, err)
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
			raw := tt.raw
			if tt.name == "unterminated parameter" {
				binary.BigEndian.PutUint32(raw, uint32(len(raw)))
			}
			_, err = nc.Write(raw)
			require.NoError(t, err)
			fe := pgproto3.NewFrontend(nc, nc)
			msg, err := fe.Receive()
			require.NoError(t, err)
			e, ok := msg.(*pgproto3.ErrorResponse)
			require.True(t, ok, "got %T", msg)
			assert.Equal(t, tt.code, e.Code, e.Message)
			_, err = fe.Receive()
			assert.Error(t, err, "connection should be closed")
		})
	}
}

func TestSSLAndGSSRequestsAreDeclinedWithoutACertificate(t *testing.T) {
	p := startProxy(t, nil)
	for _, code := range []uint32{80877103, 80877104} {
		nc, err := net.Dial("tcp", p.Addr)
		require.NoError(t, err)
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, 8)
		binary.BigEndian.PutUint32(b[4:], code)
		_, err = nc.Write(b)
		require.NoError(t, err)
		_, err = nc.Read(b[:1])
		require.NoError(t, err)
		assert.Equal(t, byte('N'), b[0])
		nc.Close()
	}
	// libpq's default sslmode=prefer falls back to plain text.
	conn, err := tryConnect("host=" + p.Host + " port=" + p.Port + " user=postgres dbname=postgres sslmode=prefer")
	require.NoError(t, err)
	conn.Close(context.Background())
}
