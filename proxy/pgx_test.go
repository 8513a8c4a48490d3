package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var allExecModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

func connect(t testing.TB, dsn string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// exercise runs a mix of what applications do through one connection and
// checks every answer.
func exercise(t testing.TB, ctx context.Context, conn *pgx.Conn, table string) {
	t.Helper()
	var n int
	var s string
	require.NoError(t, conn.QueryRow(ctx, "SELECT $1::int + 1, $2::text || 'x'", 41, "abc").Scan(&n, &s))
	assert.Equal(t, 42, n)
	assert.Equal(t, "abcx", s)

	_, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id int PRIMARY KEY, v text)", table))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, fmt.Sprintf("TRUNCATE %s", table))
	require.NoError(t, err)

	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	for i := range 10 {
		_, err = tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1, $2)", table), i, fmt.Sprint("v", i))
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit(ctx))

	// A unique violation is reported with its SQLSTATE and the session goes on.
	_, err = conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (1, 'dup')", table))
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "23505", pgErr.Code)

	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT id, v FROM %s WHERE id >= $1 ORDER BY id", table), 5)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int, error) {
		var id int
		var v string
		err := r.Scan(&id, &v)
		return id, err
	})
	require.NoError(t, err)
	assert.Equal(t, []int{5, 6, 7, 8, 9}, ids)

	batch := &pgx.Batch{}
	batch.Queue("SELECT 1")
	batch.Queue(fmt.Sprintf("SELECT count(*) FROM %s", table))
	br := conn.SendBatch(ctx, batch)
	var one, count int
	require.NoError(t, br.QueryRow().Scan(&one))
	require.NoError(t, br.QueryRow().Scan(&count))
	require.NoError(t, br.Close())
	assert.Equal(t, 1, one)
	assert.Equal(t, 10, count)

	copied, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "v"},
		pgx.CopyFromSlice(5, func(i int) ([]any, error) { return []any{100 + i, "c"}, nil }))
	require.NoError(t, err)
	assert.EqualValues(t, 5, copied)
}

func TestPgxEveryQueryExecModeWorksInSessionMode(t *testing.T) {
	p := startProxy(t, sessionMode(4))
	for i, mode := range allExecModes {
		t.Run(mode.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn := connect(t, p.DSN("postgres", "postgres", ""), mode)
			exercise(t, ctx, conn, fmt.Sprintf("pgx_session_%d", i))
		})
	}
}

func TestPgxTransactionModeServesFiftyGoroutinesOnFiveServerConnections(t *testing.T) {
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheDescribe} {
		t.Run(mode.String(), func(t *testing.T) {
			p := startProxy(t, transactionMode(5))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			setup := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
			table := fmt.Sprintf("pgx_txn_%d", i)
			_, err := setup.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s; CREATE TABLE %s (g int, n int)", table, table))
			require.NoError(t, err)

			const goroutines, rounds = 50, 40
			var wg sync.WaitGroup
			errs := make(chan error, goroutines)
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- pgxWorker(ctx, p.DSN("postgres", "postgres", ""), mode, table, g, rounds)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			var rows, sum int
			require.NoError(t, setup.QueryRow(ctx, fmt.Sprintf("SELECT count(*), coalesce(sum(n),0) FROM %s", table)).Scan(&rows, &sum))
			assert.Equal(t, goroutines*rounds, rows)
			assert.Equal(t, goroutines*rounds*(rounds-1)/2, sum)
			for _, st := range p.Cluster.Stats() {
				assert.LessOrEqual(t, st.Created, int64(5), "server connections opened")
			}
		})
	}
}

func pgxWorker(ctx context.Context, dsn string, mode pgx.QueryExecMode, table string, g, rounds int) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for n := range rounds {
		var got int
		if err := conn.QueryRow(ctx, "SELECT $1::int * 2", n).Scan(&got); err != nil {
			return fmt.Errorf("goroutine %d round %d: %w", g, n, err)
		}
		if got != n*2 {
			return fmt.Errorf("goroutine %d round %d: got %d, want %d", g, n, got, n*2)
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1, $2)", table), g, n); err != nil {
				return err
			}
			var c int
			if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE g = $1", table), g).Scan(&c); err != nil {
				return err
			}
			if c != n+1 {
				return fmt.Errorf("goroutine %d sees %d of its rows inside its transaction, want %d", g, c, n+1)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("goroutine %d round %d: %w", g, n, err)
		}
	}
	return nil
}

func TestPgxContextCancelStopsTheServerStatementAndNoOtherClients(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			edit := transactionMode(4)
			if mode == "session" {
				edit = sessionMode(4)
			}
			p := startProxy(t, edit)
			victim := connect(t, p.DSN("postgres", "postgres", "application_name=victim"), pgx.QueryExecModeExec)
			bystander := connect(t, p.DSN("postgres", "postgres", "application_name=bystander"), pgx.QueryExecModeExec)

			bystanderDone := make(chan error, 1)
			go func() {
				_, err := bystander.Exec(context.Background(), "SELECT pg_sleep(2)")
				bystanderDone <- err
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := victim.Exec(ctx, "SELECT pg_sleep(10)")
			elapsed := time.Since(start)
			require.Error(t, err)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				assert.Equal(t, "57014", pgErr.Code)
			}
			assert.Less(t, elapsed, 3*time.Second, "cancelled statement kept running")

			// The statement is gone from the server.
			admin := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
			var running int
			require.Eventually(t, func() bool {
				err := admin.QueryRow(context.Background(),
					"SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'").Scan(&running)
				return err == nil && running == 0
			}, time.Second, 50*time.Millisecond)

			require.NoError(t, <-bystanderDone, "the other client's statement was cancelled")
		})
	}
}

func TestNotificationsReachASessionModeClient(t *testing.T) {
	p := startProxy(t, sessionMode(4))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listener := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := listener.Exec(ctx, "LISTEN kproxy_events")
	require.NoError(t, err)
	notifier := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err = notifier.Exec(ctx, "NOTIFY kproxy_events, 'hello'")
	require.NoError(t, err)
	n, err := listener.WaitForNotification(ctx)
	require.NoError(t, err)
	assert.Equal(t, "kproxy_events", n.Channel)
	assert.Equal(t, "hello", n.Payload)
}

func TestSessionModeResetsTheServerConnectionBeforeTheNextClient(t *testing.T) {
	p := startProxy(t, sessionMode(1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := first.Exec(ctx, "SET search_path = kproxy_nowhere; PREPARE leftover AS SELECT 1")
	require.NoError(t, err)
	var pid1 int
	require.NoError(t, first.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid1))
	require.NoError(t, first.Close(ctx))

	second := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	var pid2 int
	var path string
	var prepared int
	require.NoError(t, second.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('search_path'), (SELECT count(*) FROM pg_prepared_statements)").Scan(&pid2, &path, &prepared))
	assert.Equal(t, pid1, pid2, "the single server connection was not reused")
	assert.Equal(t, `"$user", public`, path)
	assert.Zero(t, prepared)
}
