package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/proxy"
)

// dbConfig is a configuration for the test cluster's primary, with its
// replica when withReplica; edit may change it further.
func dbConfig(t testing.TB, withReplica bool, edit func(*config.Config)) *config.Config {
	t.Helper()
	cfg := config.Default()
	var err error
	cfg.Primary, err = config.ParseBackend(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	if withReplica {
		r, err := config.ParseBackend(pgtest.Get().ReplicaAddr)
		require.NoError(t, err)
		cfg.Replicas = []config.Backend{r}
	}
	cfg.BackendTLS.SSLMode = "disable"
	cfg.Routing.CheckPeriod = 50 * time.Millisecond
	cfg.Routing.ReadYourWritesWait = 20 * time.Millisecond
	cfg.Pool.MaxConnections = 4
	if edit != nil {
		edit(&cfg)
	}
	require.NoError(t, cfg.Validate())
	return &cfg
}

// openDB opens a library-mode DB as postgres on database postgres; it is
// closed when the test ends.
func openDB(t testing.TB, withReplica bool, edit func(*config.Config)) *pool.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pool.OpenDB(ctx, dbConfig(t, withReplica, edit), zap.NewNop(), "postgres", "postgres")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	if withReplica {
		// On a fresh cluster the monitor's first check may find the replica
		// not caught up yet; the tests route reads only once it qualifies.
		require.Eventually(t, func() bool {
			rs := db.Cluster().RoutingStats().Replicas
			return len(rs) > 0 && rs[0].Healthy
		}, 20*time.Second, 20*time.Millisecond, "the replica never became healthy: %+v", db.Cluster().RoutingStats().Replicas)
	}
	return db
}

// adminExec runs sql directly on the primary, for setting up tables.
func adminExec(t *testing.T, sql string) {
	t.Helper()
	_, err := pgtest.Get().PrimaryConn(t).Exec(context.Background(), sql)
	require.NoError(t, err)
}

// closedConns sums the server connections the cluster's pools closed.
func closedConns(c *pool.Cluster) int64 {
	var n int64
	for _, s := range c.Stats() {
		n += s.Closed
	}
	return n
}

func one(t *testing.T, r *pool.Result, err error) []any {
	t.Helper()
	require.NoError(t, err)
	require.Len(t, r.Rows, 1)
	return r.Rows[0]
}

func TestDBQueryEncodesArgumentsAndDecodesNaturalGoValues(t *testing.T) {
	adminExec(t, `DROP TABLE IF EXISTS dbtest_types;
CREATE TABLE dbtest_types (id int8 PRIMARY KEY, i4 int4, i2 int2, f8 float8, f4 float4, b bool, t text,
  ts timestamptz, d date, by bytea, n numeric, j jsonb, arr int4[], nul text, u uuid, iv interval)`)
	db := openDB(t, true, nil)
	ctx := context.Background()
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	day := time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)
	res, err := db.Exec(ctx, `INSERT INTO dbtest_types VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
		int64(1), 42, int16(-7), 2.5, float32(0.25), true, "héllo", ts, day, []byte{0, 1, 255}, "12.345",
		map[string]any{"k": []any{"v", 1}}, []int32{1, 2, 3}, nil, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "1 day 02:00:00")
	require.NoError(t, err)
	assert.Equal(t, "INSERT 0 1", res.Tag)
	assert.EqualValues(t, 1, res.RowsAffected)

	// The session reads its own write, wherever the read runs.
	res, err = db.Query(ctx, `SELECT id, i4, i2, f8, f4, b, t, ts, d, by, n, j, arr, nul, u, iv FROM dbtest_types WHERE id = $1`, 1)
	row := one(t, res, err)
	assert.Equal(t, []string{"id", "i4", "i2", "f8", "f4", "b", "t", "ts", "d", "by", "n", "j", "arr", "nul", "u", "iv"}, res.Columns)
	assert.Equal(t, int64(1), row[0])
	assert.Equal(t, int64(42), row[1])
	assert.Equal(t, int64(-7), row[2])
	assert.Equal(t, 2.5, row[3])
	assert.Equal(t, 0.25, row[4])
	assert.Equal(t, true, row[5])
	assert.Equal(t, "héllo", row[6])
	require.IsType(t, time.Time{}, row[7])
	assert.True(t, ts.Equal(row[7].(time.Time)), "got %v", row[7])
	require.IsType(t, time.Time{}, row[8])
	assert.True(t, day.Equal(row[8].(time.Time)), "got %v", row[8])
	assert.Equal(t, []byte{0, 1, 255}, row[9])
	assert.Equal(t, "12.345", row[10], "numeric comes back as its text")
	assert.Equal(t, map[string]any{"k": []any{"v", float64(1)}}, row[11])
	assert.Equal(t, []any{int64(1), int64(2), int64(3)}, row[12])
	assert.Nil(t, row[13])
	assert.Equal(t, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", row[14])
	assert.Equal(t, "1 day 02:00:00", row[15])
	assert.Equal(t, "héllo", res.Maps()[0]["t"])

	cases := []struct {
		name string
		sql  string
		args []any
		want []any
	}{
		{"a string argument is parsed by the server", "SELECT $1::int + 1", []any{"41"}, []any{int64(42)}},
		{"a Go int fits an int8 parameter", "SELECT $1::int8 * 2", []any{21}, []any{int64(42)}},
		{"NULL arguments", "SELECT $1::text IS NULL, $2::int", []any{nil, nil}, []any{true, nil}},
		{"an empty string is not NULL", "SELECT $1::text = ''", []any{""}, []any{true}},
		{"without arguments through the simple protocol", "SELECT 7::int8, 'x'::text, NULL::int, true, 1.5::float8, '{a,b}'::text[], 'infinity'::timestamptz",
			nil, []any{int64(7), "x", nil, true, 1.5, []any{"a", "b"}, "infinity"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := db.Query(ctx, tc.sql, tc.args...)
			assert.Equal(t, tc.want, one(t, res, err))
		})
	}

	t.Run("a script runs as one and returns its last statement's result", func(t *testing.T) {
		res, err := db.Query(ctx, "SELECT 1; SELECT 2 AS two, 3")
		assert.Equal(t, []any{int64(2), int64(3)}, one(t, res, err))
		assert.Equal(t, []string{"two", "?column?"}, res.Columns)
		assert.Equal(t, "SELECT 1", res.Tag)
	})
	t.Run("Exec drops rows", func(t *testing.T) {
		res, err := db.Exec(ctx, "SELECT generate_series(1, $1::int)", 5)
		require.NoError(t, err)
		assert.Empty(t, res.Rows)
		assert.EqualValues(t, 5, res.RowsAffected)
	})
	t.Run("an argument that does not fit is an error before anything runs", func(t *testing.T) {
		_, err := db.Query(ctx, "SELECT $1::int2", 1<<20)
		require.Error(t, err)
		var pe *pgconn.PgError
		assert.False(t, errors.As(err, &pe), "a client-side error, got %v", err)
	})
	t.Run("too few arguments", func(t *testing.T) {
		_, err := db.Query(ctx, "SELECT $1::int, $2::int", 1)
		require.ErrorContains(t, err, "takes 2 arguments")
	})
}

func TestDBSendsReadsToTheReplicaAndWritesToThePrimary(t *testing.T) {
	adminExec(t, `CREATE TABLE IF NOT EXISTS dbtest_route (n int); TRUNCATE dbtest_route`)
	db := openDB(t, true, nil)
	ctx := context.Background()
	inRecovery := func(s *pool.Session, sql string, args ...any) bool {
		t.Helper()
		res, err := s.Query(ctx, sql, args...)
		row := one(t, res, err)
		return row[0].(bool)
	}
	reads := db.Session()
	assert.True(t, inRecovery(reads, "SELECT pg_is_in_recovery()"), "a read without arguments")
	assert.True(t, inRecovery(reads, "SELECT pg_is_in_recovery(), $1::int", 1), "a read with arguments")
	assert.Zero(t, reads.MinLSN(), "reads leave no position behind")
	assert.False(t, inRecovery(reads, "/* kproxy:primary */ SELECT pg_is_in_recovery()"), "a primary hint")
	assert.False(t, inRecovery(reads, "SELECT pg_is_in_recovery() FROM (SELECT txid_current()) s"), "a side-effecting function")

	writes := db.Session()
	assert.False(t, inRecovery(writes, "INSERT INTO dbtest_route VALUES ($1) RETURNING pg_is_in_recovery()", 1), "a write")
	assert.NotZero(t, writes.MinLSN(), "a committed write sets the session's position")
	assert.Zero(t, db.Session().MinLSN(), "other sessions are not held back")
	var inTx bool
	require.NoError(t, db.Tx(ctx, func(tx *pool.Tx) error {
		res, err := tx.Query(ctx, "SELECT pg_is_in_recovery()")
		inTx = one(t, res, err)[0].(bool)
		return err
	}))
	assert.False(t, inTx, "a transaction runs on the primary")
	rs := db.Cluster().RoutingStats()
	assert.Positive(t, rs.RoutedReplica)
	assert.Positive(t, rs.RoutedPrimary)
}

func TestASessionAlwaysReadsItsOwnWrites(t *testing.T) {
	adminExec(t, `CREATE TABLE IF NOT EXISTS dbtest_ryw (id int PRIMARY KEY); TRUNCATE dbtest_ryw`)
	db := openDB(t, true, nil)
	ctx := context.Background()
	s := db.Session()
	const iterations = 200
	onReplica := 0
	for i := range iterations {
		switch i % 3 {
		case 0:
			_, err := s.Exec(ctx, "INSERT INTO dbtest_ryw VALUES ($1)", i)
			require.NoError(t, err)
		case 1:
			_, err := s.Exec(ctx, fmt.Sprintf("INSERT INTO dbtest_ryw VALUES (%d)", i))
			require.NoError(t, err)
		default:
			// A commit that is flushed at once reaches the replica sooner.
			require.NoError(t, s.Tx(ctx, func(tx *pool.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO dbtest_ryw VALUES ($1)", i)
				return err
			}))
		}
		res, err := s.Query(ctx, "SELECT EXISTS (SELECT 1 FROM dbtest_ryw WHERE id = $1), pg_is_in_recovery()", i)
		row := one(t, res, err)
		require.Equal(t, true, row[0], "iteration %d read stale data (on the replica: %v)", i, row[1])
		if row[1] == true {
			onReplica++
		}
	}
	rs := db.Cluster().RoutingStats()
	t.Logf("%d write-then-read iterations: no stale read; %d reads on the replica, %d stale reads avoided",
		iterations, onReplica, rs.StaleReadsAvoided)
}

func TestTxCommitsWhenItsFunctionSucceedsAndRollsBackOtherwise(t *testing.T) {
	adminExec(t, `CREATE TABLE IF NOT EXISTS dbtest_orders (id int PRIMARY KEY, status text);
CREATE TABLE IF NOT EXISTS dbtest_stock (sku text PRIMARY KEY, qty int);
CREATE TABLE IF NOT EXISTS dbtest_order_log (order_id int, note text);
TRUNCATE dbtest_orders, dbtest_stock, dbtest_order_log;
INSERT INTO dbtest_orders VALUES (1, 'new'), (2, 'new'), (3, 'new'), (4, 'new');
INSERT INTO dbtest_stock VALUES ('apple', 10)`)
	db := openDB(t, true, nil)
	ctx := context.Background()
	admin := pgtest.Get().PrimaryConn(t)
	state := func(order int) (status string, qty int, logs int) {
		t.Helper()
		require.NoError(t, admin.QueryRow(ctx, `SELECT (SELECT status FROM dbtest_orders WHERE id = $1),
 (SELECT qty FROM dbtest_stock WHERE sku = 'apple'), (SELECT count(*) FROM dbtest_order_log WHERE order_id = $1)`, order).
			Scan(&status, &qty, &logs))
		return status, qty, logs
	}
	// The workflow example: reserve stock, log, mark the order.
	process := func(order int, after func(tx *pool.Tx) error) func(tx *pool.Tx) error {
		return func(tx *pool.Tx) error {
			if _, err := tx.Exec(ctx, "UPDATE dbtest_stock SET qty = qty - 1 WHERE sku = $1", "apple"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO dbtest_order_log VALUES ($1, $2)", order, "reserved"); err != nil {
				return err
			}
			res, err := tx.Exec(ctx, "UPDATE dbtest_orders SET status = 'processed' WHERE id = $1", order)
			if err != nil {
				return err
			}
			if res.RowsAffected != 1 {
				return fmt.Errorf("order %d not updated", order)
			}
			return after(tx)
		}
	}
	boom := errors.New("boom")

	t.Run("commit", func(t *testing.T) {
		require.NoError(t, db.Tx(ctx, process(1, func(*pool.Tx) error { return nil })))
		status, qty, logs := state(1)
		assert.Equal(t, "processed", status)
		assert.Equal(t, 9, qty)
		assert.Equal(t, 1, logs)
	})
	t.Run("an error rolls back and is returned", func(t *testing.T) {
		err := db.Tx(ctx, process(2, func(*pool.Tx) error { return boom }))
		require.ErrorIs(t, err, boom)
		status, qty, logs := state(2)
		assert.Equal(t, "new", status)
		assert.Equal(t, 9, qty)
		assert.Zero(t, logs)
	})
	t.Run("a panic rolls back and panics again", func(t *testing.T) {
		assert.PanicsWithValue(t, "kaboom", func() {
			_ = db.Tx(ctx, process(3, func(*pool.Tx) error { panic("kaboom") }))
		})
		status, qty, logs := state(3)
		assert.Equal(t, "new", status)
		assert.Equal(t, 9, qty)
		assert.Zero(t, logs)
	})
	t.Run("a statement error the function ignores aborts the commit", func(t *testing.T) {
		err := db.Tx(ctx, process(4, func(tx *pool.Tx) error {
			_, err := tx.Exec(ctx, "INSERT INTO dbtest_orders VALUES ($1, 'dup')", 4)
			var pe *pgconn.PgError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, "23505", pe.Code)
			_, err = tx.Exec(ctx, "SELECT 1")
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, "25P02", pe.Code, "refused while the transaction is aborted")
			return nil
		}))
		require.ErrorIs(t, err, pool.ErrTxAborted)
		var pe *pgconn.PgError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, "23505", pe.Code)
		status, qty, _ := state(4)
		assert.Equal(t, "new", status)
		assert.Equal(t, 9, qty)
	})
	t.Run("a savepoint recovers from a statement error", func(t *testing.T) {
		require.NoError(t, db.Tx(ctx, func(tx *pool.Tx) error {
			if _, err := tx.Exec(ctx, "SAVEPOINT s"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO dbtest_orders VALUES ($1, 'dup')", 1); err == nil {
				return errors.New("duplicate accepted")
			}
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT s"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO dbtest_order_log VALUES ($1, $2)", 1, "after savepoint")
			return err
		}))
		_, _, logs := state(1)
		assert.Equal(t, 2, logs)
	})
	t.Run("transaction control inside Tx is refused", func(t *testing.T) {
		err := db.Tx(ctx, func(tx *pool.Tx) error {
			_, err := tx.Exec(ctx, "COMMIT")
			return err
		})
		require.ErrorIs(t, err, pool.ErrTxControl)
	})
	t.Run("a Tx is unusable after its function returns", func(t *testing.T) {
		var kept *pool.Tx
		require.NoError(t, db.Tx(ctx, func(tx *pool.Tx) error { kept = tx; return nil }))
		_, err := kept.Query(ctx, "SELECT 1")
		require.ErrorIs(t, err, pool.ErrTxDone)
	})
	for _, s := range db.Cluster().Stats() {
		assert.Zero(t, s.Active, "%s: every connection is back", s.Backend)
	}
}

func TestAUserSQLErrorLeavesTheConnectionUsable(t *testing.T) {
	db := openDB(t, false, func(c *config.Config) { c.Pool.MaxConnections = 1 })
	ctx := context.Background()
	pid := func() int64 {
		t.Helper()
		res, err := db.Query(ctx, "SELECT pg_backend_pid()::int8")
		return one(t, res, err)[0].(int64)
	}
	first := pid()
	cases := []struct {
		name string
		sql  string
		args []any
		code string
	}{
		{"division by zero, simple protocol", "SELECT 1/0", nil, "22012"},
		{"division by zero, extended protocol", "SELECT $1::int / 0", []any{1}, "22012"},
		{"a syntax error at Parse", "SELEC $1::int", []any{1}, "42601"},
		{"an unknown table", "SELECT * FROM dbtest_no_such_table WHERE $1", []any{true}, "42P01"},
		{"an invalid argument the server parses", "SELECT $1::int", []any{"x"}, "22P02"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // the second time, from the statement cache
				_, err := db.Query(ctx, tc.sql, tc.args...)
				var pe *pgconn.PgError
				require.ErrorAs(t, err, &pe)
				assert.Equal(t, tc.code, pe.Code)
				assert.NotEmpty(t, pe.Message)
				assert.Equal(t, first, pid(), "same server connection")
			}
		})
	}
	t.Run("COPY to the client is refused", func(t *testing.T) {
		_, err := db.Query(ctx, "COPY (SELECT 1) TO STDOUT")
		require.ErrorIs(t, err, pool.ErrCopy)
		_, err = db.Exec(ctx, "CREATE TEMP TABLE dbtest_copy (n int); COPY dbtest_copy FROM STDIN")
		require.ErrorIs(t, err, pool.ErrCopy)
	})
	t.Run("a lone BEGIN is rolled back", func(t *testing.T) {
		_, err := db.Exec(ctx, "BEGIN")
		require.ErrorIs(t, err, pool.ErrOpenTransaction)
		res, err := db.Query(ctx, "SELECT now() = statement_timestamp()")
		assert.Equal(t, true, one(t, res, err)[0], "not inside a transaction")
	})
	t.Run("an error inside Tx", func(t *testing.T) {
		err := db.Tx(ctx, func(tx *pool.Tx) error {
			_, err := tx.Query(ctx, "SELECT $1::int / 0", 1)
			return err
		})
		var pe *pgconn.PgError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, "22012", pe.Code)
	})
	assert.Equal(t, first, pid())
	assert.Zero(t, closedConns(db.Cluster()))
	st := db.Cluster().Stats()
	require.Len(t, st, 1)
	assert.Equal(t, 100, st[0].Servers[0].Health, "user errors do not lower health")
	assert.Positive(t, st[0].Queries.Errors)
}

func TestSessionStateDoesNotOutliveAStatement(t *testing.T) {
	db := openDB(t, false, func(c *config.Config) { c.Pool.MaxConnections = 1 })
	ctx := context.Background()
	_, err := db.Exec(ctx, "SET application_name = 'dbtest_leak'")
	require.NoError(t, err)
	res, err := db.Query(ctx, "SHOW application_name")
	assert.NotEqual(t, "dbtest_leak", one(t, res, err)[0])
	_, err = db.Exec(ctx, "CREATE TEMP TABLE dbtest_tmp (n int)")
	require.NoError(t, err)
	res, err = db.Query(ctx, "SELECT to_regclass('pg_temp.dbtest_tmp') IS NULL")
	assert.Equal(t, true, one(t, res, err)[0])

	var inside any
	require.NoError(t, db.Tx(ctx, func(tx *pool.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL application_name = 'dbtest_local'"); err != nil {
			return err
		}
		res, err := tx.Query(ctx, "SELECT current_setting($1)", "application_name")
		if err == nil {
			inside = res.Rows[0][0]
		}
		return err
	}))
	assert.Equal(t, "dbtest_local", inside, "SET LOCAL holds for the transaction")
}

func TestAChangedResultTypeIsPreparedAfresh(t *testing.T) {
	adminExec(t, `DROP TABLE IF EXISTS dbtest_heal; CREATE TABLE dbtest_heal (a int); INSERT INTO dbtest_heal VALUES (1)`)
	db := openDB(t, false, func(c *config.Config) { c.Pool.MaxConnections = 1 })
	ctx := context.Background()
	const q = "SELECT * FROM dbtest_heal WHERE a = $1"
	res, err := db.Query(ctx, q, 1)
	assert.Equal(t, []any{int64(1)}, one(t, res, err))
	adminExec(t, `ALTER TABLE dbtest_heal ADD COLUMN b text DEFAULT 'x'`)
	res, err = db.Query(ctx, q, 1)
	assert.Equal(t, []any{int64(1), "x"}, one(t, res, err))
	assert.Equal(t, []string{"a", "b"}, res.Columns)
	st := db.Cluster().Stats()
	require.Len(t, st, 1)
	assert.EqualValues(t, 1, st[0].Queries.Errors, "the server refused the old statement once")
	assert.EqualValues(t, 2, st[0].PreparedMisses, "prepared, then prepared afresh")
}

func TestAReplicaRefusingAWriteRunsItOnThePrimaryAndTheShapeIsLearned(t *testing.T) {
	ctx := context.Background()
	adminExec(t, `CREATE TABLE IF NOT EXISTS dbtest_touch_log (n int);
TRUNCATE dbtest_touch_log;
CREATE OR REPLACE FUNCTION dbtest_touch(n int) RETURNS int LANGUAGE sql VOLATILE
  AS 'INSERT INTO dbtest_touch_log VALUES (n) RETURNING n'`)
	require.NoError(t, pgtest.Get().WaitReplicaCaughtUp(ctx))
	replica := pgtest.Get().ReplicaConn(t)
	require.Eventually(t, func() bool {
		var ok bool
		return replica.QueryRow(ctx, "SELECT to_regprocedure('dbtest_touch(int)') IS NOT NULL").Scan(&ok) == nil && ok
	}, 10*time.Second, 20*time.Millisecond, "the function reaches the replica")

	// Hosted mode: the classifier is shared, and told by mistake that the
	// function only reads.
	c := pool.NewCluster(dbConfig(t, true, nil), zap.NewNop())
	defer c.Close()
	cl := classify.New(100, []string{"dbtest_touch"})
	db := pool.NewDB(c, cl, "postgres", "postgres")
	defer db.Close()

	// Fresh sessions: a session that wrote may read on the primary.
	for i := range 3 {
		res, err := db.Session().Query(ctx, "SELECT dbtest_touch($1)", i)
		assert.Equal(t, []any{int64(i)}, one(t, res, err), "call %d", i)
	}
	assert.EqualValues(t, 1, c.RoutingStats().ReplayedOnPrimary, "replayed once; then the shape goes to the primary")
	assert.Equal(t, 1, cl.Learned())
	assert.NotZero(t, cl.Classify("SELECT dbtest_touch($1)").Flags&classify.FlagLearned)

	for _, n := range []int{100, 101} { // one shape: literals do not count
		res, err := db.Session().Query(ctx, fmt.Sprintf("SELECT dbtest_touch(%d)", n))
		assert.Equal(t, []any{int64(n)}, one(t, res, err))
	}
	assert.EqualValues(t, 2, c.RoutingStats().ReplayedOnPrimary)
	var rows, distinct int
	require.NoError(t, pgtest.Get().PrimaryConn(t).QueryRow(ctx, "SELECT count(*), count(DISTINCT n) FROM dbtest_touch_log").Scan(&rows, &distinct))
	assert.Equal(t, 5, rows, "each call wrote exactly once")
	assert.Equal(t, 5, distinct)

	res, err := db.Session().Query(ctx, "SELECT pg_is_in_recovery()")
	assert.Equal(t, []any{true}, one(t, res, err), "reads still go to the replica")
}

func TestAReadWhoseReplicaConnectionDiesRunsOnThePrimary(t *testing.T) {
	db := openDB(t, true, nil)
	ctx := context.Background()
	res, err := db.Query(ctx, "SELECT pg_is_in_recovery()")
	require.Equal(t, []any{true}, one(t, res, err))
	replica := pgtest.Get().ReplicaConn(t)
	killed := 0
	for _, ps := range db.Cluster().Stats() {
		if ps.Backend != pgtest.Get().ReplicaAddr {
			continue
		}
		for _, sv := range ps.Servers {
			_, err := replica.Exec(ctx, "SELECT pg_terminate_backend($1)", int(sv.PID))
			require.NoError(t, err)
			killed++
		}
	}
	require.Positive(t, killed)
	res, err = db.Query(ctx, "SELECT $1::int", 7)
	assert.Equal(t, []any{int64(7)}, one(t, res, err), "answered although its connection died")
	assert.EqualValues(t, 1, db.Cluster().RoutingStats().ReadsRetried)
}

func TestCancellingTheContextStopsTheStatementAndTheConnectionIsKept(t *testing.T) {
	db := openDB(t, true, nil)
	cases := []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"simple protocol on the replica", func(ctx context.Context) error {
			_, err := db.Query(ctx, "SELECT pg_sleep(10)")
			return err
		}},
		{"extended protocol on the primary", func(ctx context.Context) error {
			_, err := db.Query(ctx, "/* kproxy:primary */ SELECT pg_sleep($1)", 10)
			return err
		}},
		{"inside a transaction", func(ctx context.Context) error {
			return db.Tx(ctx, func(tx *pool.Tx) error {
				if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "SELECT pg_sleep($1)", 10)
				return err
			})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			closed := closedConns(db.Cluster())
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := tc.run(ctx)
			took := time.Since(start)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			var pe *pgconn.PgError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, "57014", pe.Code)
			assert.Less(t, took, 5*time.Second)
			assert.Equal(t, closed, closedConns(db.Cluster()), "the connection went back to the pool")
			res, err := db.Query(context.Background(), "SELECT 1")
			assert.Equal(t, []any{int64(1)}, one(t, res, err))
		})
	}
	for _, s := range db.Cluster().Stats() {
		assert.Zero(t, s.Active, "%s: every connection is back", s.Backend)
	}
}

func TestFiftyGoroutinesShareTheDB(t *testing.T) {
	adminExec(t, `CREATE TABLE IF NOT EXISTS dbtest_conc (g int, i int, PRIMARY KEY (g, i)); TRUNCATE dbtest_conc`)
	db := openDB(t, true, func(c *config.Config) { c.Pool.MaxConnections = 8 })
	ctx := context.Background()
	const goroutines, iterations = 50, 20
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := db.Session()
			for i := range iterations {
				var err error
				switch i % 3 {
				case 0:
					_, err = s.Exec(ctx, "INSERT INTO dbtest_conc VALUES ($1, $2)", g, i)
				case 1:
					err = s.Tx(ctx, func(tx *pool.Tx) error {
						_, err := tx.Exec(ctx, "INSERT INTO dbtest_conc VALUES ($1, $2)", g, i)
						return err
					})
				default:
					var res *pool.Result
					res, err = s.Query(ctx, "SELECT count(*) FROM dbtest_conc WHERE g = $1", g)
					if want := int64(i - i/3); err == nil && res.Rows[0][0] != want {
						err = fmt.Errorf("goroutine %d saw %v rows, wants %d", g, res.Rows[0][0], want)
					}
				}
				if err != nil {
					if failures.Add(1) <= 30 {
						t.Errorf("goroutine %d, iteration %d: %v", g, i, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, failures.Load())
	var total int
	require.NoError(t, pgtest.Get().PrimaryConn(t).QueryRow(ctx, "SELECT count(*) FROM dbtest_conc").Scan(&total))
	assert.Equal(t, goroutines*(iterations-iterations/3), total)
	for _, s := range db.Cluster().Stats() {
		assert.Zero(t, s.Active, "%s: every connection is back", s.Backend)
		assert.LessOrEqual(t, s.Open, 8)
	}
}

func TestANetworkClientPreparesAfreshAndItsStatementLeavesWithIt(t *testing.T) {
	cfg := dbConfig(t, false, func(c *config.Config) {
		c.Pool.MaxConnections = 1
		c.Listen = "127.0.0.1:0"
		c.AdminListen = ""
	})
	c := pool.NewCluster(cfg, zap.NewNop())
	defer c.Close()
	srv, err := proxy.New(cfg, c, zap.NewNop())
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	}()
	db := pool.NewDB(c, nil, "postgres", "postgres")
	defer db.Close()
	ctx := context.Background()

	const q = "SELECT $1::int + 100"
	res, err := db.Query(ctx, q, 1)
	assert.Equal(t, []any{int64(101)}, one(t, res, err))
	hits := c.Stats()[0].PreparedHits

	host, port, _ := net.SplitHostPort(ln.Addr().String())
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable", host, port))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, q, 2).Scan(&n))
	assert.Equal(t, 102, n)
	assert.Equal(t, hits, c.Stats()[0].PreparedHits, "the network client's Parse was prepared afresh, not found")

	listed := func(pc *pgx.Conn) []string {
		// The server connection's statements: the function behind
		// pg_prepared_statements, which kproxy shows a client as its own.
		rows, err := pc.Query(ctx, "SELECT name FROM pg_prepared_statement() WHERE statement = '"+q+"' ORDER BY name", pgx.QueryExecModeSimpleProtocol)
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return names
	}
	require.Len(t, listed(conn), 2, "the in-process statement and the network client's")
	require.NoError(t, conn.Close(ctx))

	// Once no client holds it, the network client's statement is closed
	// before the connection serves anyone else.
	other, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable", host, port))
	require.NoError(t, err)
	defer other.Close(ctx)
	assert.Equal(t, []string{pool.StatementName(q, []byte{0, 0}, "")}, listed(other))
}

func TestADBRefusesStatementsOnceClosed(t *testing.T) {
	db := openDB(t, false, nil)
	require.NoError(t, db.Close())
	require.NoError(t, db.Close(), "Close is idempotent")
	_, err := db.Query(context.Background(), "SELECT 1")
	require.ErrorIs(t, err, pool.ErrDBClosed)
	require.ErrorIs(t, db.Tx(context.Background(), func(*pool.Tx) error { return nil }), pool.ErrDBClosed)
}

func BenchmarkDBQuery(b *testing.B) {
	db := openDB(b, false, nil)
	ctx := context.Background()
	if _, err := db.Query(ctx, "SELECT $1::int", 1); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		res, err := db.Query(ctx, "SELECT $1::int", i)
		if err != nil {
			b.Fatal(err)
		}
		if res.Rows[0][0] != int64(i) {
			b.Fatalf("got %v, want %d", res.Rows[0][0], i)
		}
	}
}
