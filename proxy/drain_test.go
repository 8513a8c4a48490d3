package proxy_test

import (
	"context"
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
