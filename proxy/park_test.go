package proxy_test

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

// waitParked waits until n clients of p are parked.
func waitParked(t *testing.T, p *testProxy, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return p.Server.Stats().ClientsParked == n },
		5*time.Second, 20*time.Millisecond, "clients parked: want %d", n)
}

func TestAnIdleClientParksAndItsNextStatementsAreAnswered(t *testing.T) {
	for _, mode := range []struct {
		name string
		edit func(*config.Config)
	}{{"transaction mode", transactionMode(2)}, {"session mode", sessionMode(2)}} {
		t.Run(mode.name, func(t *testing.T) {
			p := startProxy(t, mode.edit)
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, p.DSN("postgres", "postgres", ""))
			require.NoError(t, err)
			defer conn.Close(ctx)
			var n int
			require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&n))
			waitParked(t, p, 1)

			require.NoError(t, conn.QueryRow(ctx, "SELECT $1::int", 42).Scan(&n))
			require.Equal(t, 42, n)
			// A transaction left idle parks its client too, and goes on.
			tx, err := conn.Begin(ctx)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, "CREATE TEMP TABLE park_probe (a int) ON COMMIT DROP")
			require.NoError(t, err)
			waitParked(t, p, 1)
			_, err = tx.Exec(ctx, "INSERT INTO park_probe VALUES (7)")
			require.NoError(t, err)
			require.NoError(t, tx.QueryRow(ctx, "SELECT a FROM park_probe").Scan(&n))
			require.Equal(t, 7, n)
			require.NoError(t, tx.Commit(ctx))
			require.GreaterOrEqual(t, p.Server.Stats().Parks, int64(2))
		})
	}
}

func TestAMessageCutByAParkArrivesWhole(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	for _, size := range []int{40, 30000} { // fits the read buffer; does not
		literal := strings.Repeat("k", size)
		nc, fe := rawStartup(t, p)
		_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
		body := "SELECT '" + literal + "'\x00"
		frame := make([]byte, 5, 5+len(body))
		frame[0] = 'Q'
		binary.BigEndian.PutUint32(frame[1:], uint32(4+len(body)))
		frame = append(frame, body...)
		half := len(frame) / 2
		_, err := nc.Write(frame[:half])
		require.NoError(t, err)
		// Long enough for the sweeper to ask the waiting client to park.
		time.Sleep(1500 * time.Millisecond)
		_, err = nc.Write(frame[half:])
		require.NoError(t, err)
		var got string
		for {
			msg, err := fe.Receive()
			require.NoError(t, err)
			if dr, ok := msg.(*pgproto3.DataRow); ok {
				got = string(dr.Values[0])
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("%d-byte literal: %s %s", size, e.Code, e.Message)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		require.Equal(t, literal, got, "%d-byte literal", size)
		if p.Config.RelayEngine != "loop" {
			// An event loop owns every idle client from its login on,
			// and reads a message in as many pieces as it comes.
			require.Zero(t, p.Server.Stats().Parks, "a client parked with half a message read")
		}
		nc.Close()
	}
}

func TestAParkedClientThatHangsUpIsForgotten(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	nc, _ := rawStartup(t, p)
	waitParked(t, p, 1)
	require.Equal(t, 1, p.Server.Stats().Clients)
	nc.Close()
	require.Eventually(t, func() bool { return p.Server.Stats().Clients == 0 }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 0, p.Server.Stats().ClientsParked)
}

func TestShutdownClosesParkedClientsWithAnError(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	_, fe := rawStartup(t, p)
	waitParked(t, p, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Server.Shutdown(ctx))
	e := receiveError(t, fe)
	require.Equal(t, "57P01", e.Code)
	_, err := fe.Receive()
	require.Error(t, err, "the connection is closed")
}
