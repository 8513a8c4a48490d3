package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestShutdownLetsOpenTransactionsFinishThenClosesClients(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	ctx := context.Background()
	busy := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	idle := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := busy.Exec(ctx, "CREATE TABLE IF NOT EXISTS drain_t (v int)")
	require.NoError(t, err)
	tx, err := busy.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "INSERT INTO drain_t VALUES (1)")
	require.NoError(t, err)

	shutdownCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Server.Shutdown(shutdownCtx) }()

	// New clients are refused, the idle client is told to go away.
	require.Eventually(t, func() bool {
		_, err := tryConnect(p.DSN("postgres", "postgres", ""))
		return err != nil
	}, 5*time.Second, 20*time.Millisecond)
	_, err = idle.Exec(ctx, "SELECT 1")
	assert.Error(t, err)

	// The open transaction still commits.
	_, err = tx.Exec(ctx, "INSERT INTO drain_t VALUES (2)")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-done)
	_, err = busy.Exec(ctx, "SELECT 1")
	assert.Error(t, err, "client still connected after shutdown")
}

// A client whose statement is still running when Shutdown's deadline passes
// is disconnected then, and Shutdown returns, without waiting for the
// statement to end: a simple Query that begins a transaction is relayed by
// the client's own goroutine, which must be interrupted too.
func TestShutdownDeadlineDisconnectsAClientWaitingForItsQuery(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	ctx := context.Background()
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	admin := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	sleep := fmt.Sprintf("SELECT pg_sleep(30) AS shutdown_deadline_%d", time.Now().UnixNano())
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, sleep)
		errc <- err
	}()
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", sleep).Scan(&n)
		return err == nil && n == 1
	}, 10*time.Second, 20*time.Millisecond)

	shutdownCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- p.Server.Shutdown(shutdownCtx) }()
	select {
	case err := <-shutdown:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown had not returned 10 s after its deadline")
	}
	requireSQLState(t, <-errc, "57P01")
}
