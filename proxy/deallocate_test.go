package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// TestDeallocateByEveryProtocolAsOnPostgres runs DEALLOCATE name and
// DEALLOCATE ALL by the simple protocol, as an unnamed extended-protocol
// statement (how psycopg sends it after a rollback) and as a named prepared
// statement, with a second client's statements on the same single server
// connection. Each outcome must be Postgres' own, and the second client's
// statements must never be lost: on the server they are shared, and the
// client's names are not the server's.
func TestDeallocateByEveryProtocolAsOnPostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startProxy(t, transactionMode(1))
	direct := deallocateScenario(ctx, t, directDSN("postgres", "postgres", ""))
	proxied := deallocateScenario(ctx, t, p.DSN("postgres", "postgres", ""))
	require.Equal(t, direct, proxied)
}

// deallocateScenario returns what each step gave on dsn.
func deallocateScenario(ctx context.Context, t *testing.T, dsn string) []string {
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, dsn)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	a, b := connect(), connect()
	var out []string
	note := func(step string, err error) {
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			out = append(out, step+": ok")
		case errors.As(err, &pgErr):
			out = append(out, step+": "+pgErr.Code)
		default:
			out = append(out, fmt.Sprintf("%s: %v", step, err))
		}
	}
	run := func(c *pgx.Conn, name string) error {
		var n int
		return c.QueryRow(ctx, name, 7).Scan(&n)
	}
	prepare := func(c *pgx.Conn, name string) {
		_, err := c.Prepare(ctx, name, "SELECT $1::int + 1")
		require.NoError(t, err)
	}
	prepare(b, "b1")
	ways := []struct {
		name string
		exec func(sql string) error
	}{
		{"simple", func(sql string) error { _, err := a.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); return err }},
		{"unnamed", func(sql string) error { _, err := a.Exec(ctx, sql, pgx.QueryExecModeExec); return err }},
		{"named", func(sql string) error {
			sd, err := a.Prepare(ctx, "dealloc", sql)
			if err != nil {
				return err
			}
			_, err = a.Exec(ctx, sd.Name)
			_ = a.Deallocate(ctx, "dealloc")
			return err
		}},
	}
	for _, w := range ways {
		prepare(a, "a1")
		prepare(a, "a2")
		note(w.name+" DEALLOCATE a1", w.exec("DEALLOCATE a1"))
		// While a is idle: it must not keep the only server connection.
		note(w.name+" b1 after", run(b, "b1"))
		note(w.name+" a1 after", run(a, "a1"))
		note(w.name+" a2 after", run(a, "a2"))
		note(w.name+" DEALLOCATE missing", w.exec("DEALLOCATE no_such_statement"))
		// In a transaction, the missing statement fails the transaction.
		tx, err := a.Begin(ctx)
		require.NoError(t, err)
		note(w.name+" DEALLOCATE missing in a transaction", w.exec("DEALLOCATE no_such_statement"))
		_, err = tx.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol)
		note(w.name+" next statement of the transaction", err)
		require.NoError(t, tx.Rollback(ctx))
		note(w.name+" DEALLOCATE ALL", w.exec("DEALLOCATE ALL"))
		note(w.name+" b1 after ALL", run(b, "b1"))
		note(w.name+" a2 after ALL", run(a, "a2"))
		// pgx still believes in a1 and a2: forget them as the server did.
		_ = a.Deallocate(ctx, "a1")
		_ = a.Deallocate(ctx, "a2")
	}
	return out
}
