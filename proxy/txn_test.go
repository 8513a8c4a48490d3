package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

func TestPinsLastOnlyWhileTheirCauseExists(t *testing.T) {
	tests := []struct {
		reason, pin, release string
	}{
		{"listen", "LISTEN kproxy_pin_test", "UNLISTEN kproxy_pin_test"},
		{"advisory_lock", "SELECT pg_advisory_lock(4242)", "SELECT pg_advisory_unlock(4242)"},
		{"temp_table", "CREATE TEMP TABLE pin_tt (a int)", "DROP TABLE pin_tt"},
		{"cursor_with_hold", "DECLARE pin_c CURSOR WITH HOLD FOR SELECT 1", "CLOSE pin_c"},
		{"prepared_statement", "PREPARE pin_q AS SELECT 1", "DEALLOCATE pin_q"},
	}
	for _, tt := range tests {
		t.Run(tt.reason, func(t *testing.T) {
			p := startProxy(t, transactionMode(3))
			ctx := context.Background()
			conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
			_, err := conn.Exec(ctx, tt.pin)
			require.NoError(t, err)
			assert.Equal(t, map[string]int{tt.reason: 1}, p.Server.Stats().PinnedClients)

			// While pinned, every transaction runs on the same server connection.
			var pid int
			require.NoError(t, conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid))
			for range 5 {
				var again int
				require.NoError(t, conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&again))
				assert.Equal(t, pid, again)
			}
			_, err = conn.Exec(ctx, tt.release)
			require.NoError(t, err)
			st := p.Server.Stats()
			assert.Empty(t, st.PinnedClients)
			assert.EqualValues(t, 1, st.PinsTotal[tt.reason])
			assert.Contains(t, st.PinSeconds, tt.reason)
			assert.Zero(t, st.ClientsAttached, "the unpinned client should hold no server connection")
		})
	}
}

func TestAStatementThatOnlyMightPinDoesNot(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	ctx := context.Background()
	holder := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	_, err := holder.Exec(ctx, "SELECT pg_advisory_lock(777)")
	require.NoError(t, err)
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	var got bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(777)").Scan(&got))
	assert.False(t, got)
	assert.Empty(t, p.Server.Stats().PinnedClients)
	// A transaction-scoped temporary table leaves nothing behind either.
	_, err = conn.Exec(ctx, "BEGIN; CREATE TEMP TABLE gone (a int) ON COMMIT DROP; COMMIT")
	require.NoError(t, err)
	assert.Empty(t, p.Server.Stats().PinnedClients)
}

func TestAdvisoryLocksBehaveAsOnADirectConnection(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	ctx := context.Background()
	a := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	b := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	var ok bool
	require.NoError(t, a.QueryRow(ctx, "SELECT pg_try_advisory_lock(99)").Scan(&ok))
	require.True(t, ok)
	for range 3 { // a's later transactions still hold it
		require.NoError(t, b.QueryRow(ctx, "SELECT pg_try_advisory_lock(99)").Scan(&ok))
		assert.False(t, ok)
		_, err := a.Exec(ctx, "SELECT 1")
		require.NoError(t, err)
	}
	require.NoError(t, a.QueryRow(ctx, "SELECT pg_advisory_unlock(99)").Scan(&ok))
	require.True(t, ok)
	require.NoError(t, b.QueryRow(ctx, "SELECT pg_try_advisory_lock(99)").Scan(&ok))
	assert.True(t, ok)
	require.NoError(t, b.QueryRow(ctx, "SELECT pg_advisory_unlock(99)").Scan(&ok))
}

func TestTemporaryTablesLiveAcrossTransactionsOfTheirClient(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	ctx := context.Background()
	a := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := a.Exec(ctx, "CREATE TEMP TABLE scratch (v int)")
	require.NoError(t, err)
	for i := range 5 {
		_, err := a.Exec(ctx, "INSERT INTO scratch VALUES ($1)", i)
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, a.QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&n))
	assert.Equal(t, 5, n)
	b := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err = b.Exec(ctx, "SELECT * FROM scratch")
	requireSQLState(t, err, "42P01")
}

func TestListenNotifyWorksInTransactionMode(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	listener := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := listener.Exec(ctx, "LISTEN txn_events")
	require.NoError(t, err)
	notifier := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	for i := range 3 {
		_, err = notifier.Exec(ctx, fmt.Sprintf("NOTIFY txn_events, 'n%d'", i))
		require.NoError(t, err)
		n, err := listener.WaitForNotification(ctx)
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("n%d", i), n.Payload)
	}
}

// clientSettings is what one client of the isolation test sets.
type clientSettings struct {
	searchPath, appName, timeout, zone string
}

func TestSettingsFollowEachClientAndNeverLeakToAnother(t *testing.T) {
	p := startProxy(t, transactionMode(3))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	zones := []string{"UTC", "Asia/Tokyo", "Europe/Paris", "America/New_York", "Australia/Sydney"}
	const clients, transactions = 20, 1000
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		want := clientSettings{
			searchPath: fmt.Sprintf("schema_%d, public", c),
			appName:    fmt.Sprintf("client_%d", c),
			timeout:    fmt.Sprintf("%ds", 100+c),
			zone:       zones[c%len(zones)],
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- settingsClient(ctx, p, c, want, transactions/clients)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, st := range p.Cluster.Stats() {
		assert.LessOrEqual(t, st.Created, int64(3))
	}
	assert.Empty(t, p.Server.Stats().PinnedClients, "settings must not pin")
}

func settingsClient(ctx context.Context, p *testProxy, c int, want clientSettings, rounds int) error {
	cfg, err := pgx.ParseConfig(p.DSN("postgres", "postgres", ""))
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	// A third of the clients give their settings at startup, a third with
	// SET, a third with set_config.
	if c%3 == 0 {
		cfg.RuntimeParams = map[string]string{"search_path": want.searchPath, "application_name": want.appName,
			"statement_timeout": want.timeout, "TimeZone": want.zone}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	switch c % 3 {
	case 1:
		_, err = conn.Exec(ctx, fmt.Sprintf("SET search_path = %s; SET application_name = '%s'; SET statement_timeout = '%s'; SET TimeZone = '%s'",
			want.searchPath, want.appName, want.timeout, want.zone))
	case 2:
		_, err = conn.Exec(ctx, "SELECT set_config('search_path', $1, false), set_config('application_name', $2, false), set_config('statement_timeout', $3, false), set_config('TimeZone', $4, false)",
			want.searchPath, want.appName, want.timeout, want.zone)
	}
	if err != nil {
		return fmt.Errorf("client %d: %w", c, err)
	}
	for i := range rounds {
		check := func(q interface {
			QueryRow(context.Context, string, ...any) pgx.Row
		}) error {
			var got clientSettings
			err := q.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('application_name'), current_setting('statement_timeout'), current_setting('TimeZone')").
				Scan(&got.searchPath, &got.appName, &got.timeout, &got.zone)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("client %d round %d sees %+v, want %+v", c, i, got, want)
			}
			return nil
		}
		if i%2 == 0 {
			if err := check(conn); err != nil {
				return err
			}
		} else {
			// SET LOCAL inside a transaction lasts for that transaction only.
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL application_name = 'local_only'"); err != nil {
					return err
				}
				var local string
				if err := tx.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&local); err != nil {
					return err
				}
				if local != "local_only" {
					return fmt.Errorf("SET LOCAL not in effect: %q", local)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("client %d round %d: %w", c, i, err)
			}
			if err := check(conn); err != nil {
				return err
			}
		}
		if got := conn.PgConn().ParameterStatus("application_name"); got != want.appName {
			return fmt.Errorf("client %d round %d: ParameterStatus application_name = %q, want %q", c, i, got, want.appName)
		}
		if got := conn.PgConn().ParameterStatus("TimeZone"); got != want.zone {
			return fmt.Errorf("client %d round %d: ParameterStatus TimeZone = %q, want %q", c, i, got, want.zone)
		}
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
	}
	return nil
}

func TestPgxCachedStatementsAcrossFiveServerConnections(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe} {
		t.Run(mode.String(), func(t *testing.T) {
			p := startProxy(t, transactionMode(5))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			const goroutines, queries, distinct = 50, 10000, 100
			var wg sync.WaitGroup
			errs := make(chan error, goroutines)
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- func() error {
						cfg, err := pgx.ParseConfig(p.DSN("postgres", "postgres", ""))
						if err != nil {
							return err
						}
						cfg.DefaultQueryExecMode = mode
						conn, err := pgx.ConnectConfig(ctx, cfg)
						if err != nil {
							return err
						}
						defer conn.Close(context.Background())
						for i := range queries / goroutines {
							s := (g*7 + i) % distinct
							var got int
							err := conn.QueryRow(ctx, fmt.Sprintf("SELECT $1::int + %d", s), i).Scan(&got)
							if err != nil {
								return fmt.Errorf("goroutine %d query %d: %w", g, i, err)
							}
							if got != i+s {
								return fmt.Errorf("goroutine %d query %d: got %d, want %d", g, i, got, i+s)
							}
						}
						return nil
					}()
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			st := p.Cluster.Stats()[0]
			assert.LessOrEqual(t, st.Created, int64(5))
			if mode == pgx.QueryExecModeCacheStatement {
				assert.Positive(t, st.PreparedHits)
			}
			t.Logf("prepared statements: %d hits, %d misses", st.PreparedHits, st.PreparedMisses)
		})
	}
}

func TestServerPreparedStatementsStayWithinTheLimit(t *testing.T) {
	const limit, servers = 10, 3
	p := startProxy(t, func(c *config.Config) {
		c.PoolMode = config.PoolModeTransaction
		c.Pool.MaxConnections = servers
		c.Pool.MaxPreparedStatements = limit
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeCacheStatement)
			for i := range 10 * limit {
				var got int
				assert.NoError(t, conn.QueryRow(ctx, fmt.Sprintf("SELECT %d + $1::int", i), g).Scan(&got))
			}
		}()
	}
	wg.Wait()
	// Hold every server connection at once to look at each one.
	var counts []int
	var txs []pgx.Tx
	for range servers {
		conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		var n int
		// The server connection's statements (the view shows the client's).
		require.NoError(t, tx.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statement()").Scan(&n))
		counts = append(counts, n)
		txs = append(txs, tx)
	}
	for _, tx := range txs {
		require.NoError(t, tx.Rollback(ctx))
	}
	for _, n := range counts {
		assert.LessOrEqual(t, n, limit)
	}
	st := p.Cluster.Stats()[0]
	assert.Positive(t, st.PreparedEvictions)
	for _, s := range st.Servers {
		assert.LessOrEqual(t, s.Prepared, int64(limit))
	}
	t.Logf("statements per server connection: %v; evictions: %d", counts, st.PreparedEvictions)
}

func TestAPreparedStatementHealsAfterAlterTable(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	ctx := context.Background()
	admin := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := admin.Exec(ctx, "DROP TABLE IF EXISTS heal_t; CREATE TABLE heal_t (id int PRIMARY KEY, a text); INSERT INTO heal_t VALUES (1, 'x')")
	require.NoError(t, err)

	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	pc := conn.PgConn()
	_, err = pc.Prepare(ctx, "heal", "SELECT * FROM heal_t WHERE id = $1", nil)
	require.NoError(t, err)
	run := func() ([][][]byte, error) {
		res := pc.ExecPrepared(ctx, "heal", [][]byte{[]byte("1")}, nil, nil).Read()
		return res.Rows, res.Err
	}
	rows, err := run()
	require.NoError(t, err)
	require.Len(t, rows[0], 2)

	_, err = admin.Exec(ctx, "ALTER TABLE heal_t ADD COLUMN b int DEFAULT 7")
	require.NoError(t, err)
	// As on Postgres, the client's statement still has its old result
	// columns: running it fails until the client prepares it again.
	_, err = run()
	requireSQLState(t, err, "0A000")
	require.NoError(t, pc.Deallocate(ctx, "heal"))
	_, err = pc.Prepare(ctx, "heal", "SELECT * FROM heal_t WHERE id = $1", nil)
	require.NoError(t, err)
	for range 3 {
		rows, err = run()
		require.NoError(t, err)
		assert.Len(t, rows[0], 3)
	}
}

func TestNamedStatementsBehaveAsOnARealConnection(t *testing.T) {
	p := startProxy(t, transactionMode(2))
	ctx := context.Background()
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	pc := conn.PgConn()
	exec := func(name string) error {
		return pc.ExecPrepared(ctx, name, nil, nil, nil).Read().Err
	}

	_, err := pc.Prepare(ctx, "s1", "SELECT 1", nil)
	require.NoError(t, err)
	_, err = pc.Prepare(ctx, "s1", "SELECT 2", nil)
	requireSQLState(t, err, "42P05")
	require.NoError(t, exec("s1"))
	requireSQLState(t, exec("nope"), "26000")

	// A Parse error reaches the client at Parse time.
	_, err = pc.Prepare(ctx, "bad", "SELECT * FROM no_such_table_anywhere", nil)
	requireSQLState(t, err, "42P01")
	requireSQLState(t, exec("bad"), "26000")

	// Describe reports parameters and columns of the client's statement.
	sd, err := pc.Prepare(ctx, "s2", "SELECT $1::int AS a, 'x'::text AS b", nil)
	require.NoError(t, err)
	require.Len(t, sd.ParamOIDs, 1)
	require.Len(t, sd.Fields, 2)
	assert.Equal(t, "a", sd.Fields[0].Name)

	require.NoError(t, pc.Deallocate(ctx, "s1"))
	requireSQLState(t, exec("s1"), "26000")
	_, err = pc.Exec(ctx, "DEALLOCATE s2").ReadAll()
	require.NoError(t, err)
	requireSQLState(t, exec("s2"), "26000")

	_, err = pc.Prepare(ctx, "s3", "SELECT 3", nil)
	require.NoError(t, err)
	_, err = pc.Exec(ctx, "DEALLOCATE ALL").ReadAll()
	require.NoError(t, err)
	requireSQLState(t, exec("s3"), "26000")

	_, err = pc.Prepare(ctx, "s4", "SELECT 4", nil)
	require.NoError(t, err)
	_, err = pc.Exec(ctx, "SET application_name = 'before_discard'").ReadAll()
	require.NoError(t, err)
	_, err = pc.Exec(ctx, "DISCARD ALL").ReadAll()
	require.NoError(t, err)
	requireSQLState(t, exec("s4"), "26000")
	var app string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&app))
	assert.Equal(t, "", app)
	// The same name can be prepared again afterwards.
	_, err = pc.Prepare(ctx, "s4", "SELECT 44", nil)
	require.NoError(t, err)
	res := pc.ExecPrepared(ctx, "s4", nil, nil, nil).Read()
	require.NoError(t, res.Err)
	assert.Equal(t, "44", string(res.Rows[0][0]))
}

func TestCustomSettingsFollowTheClient(t *testing.T) {
	p := startProxy(t, transactionMode(3))
	ctx := context.Background()
	a := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	b := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	_, err := a.Exec(ctx, "SET app.tenant = 'acme'")
	require.NoError(t, err)
	_, err = b.Exec(ctx, "SELECT set_config('app.tenant', 'globex', false)")
	require.NoError(t, err)
	for range 20 {
		var got string
		require.NoError(t, a.QueryRow(ctx, "SELECT current_setting('app.tenant', true)").Scan(&got))
		assert.Equal(t, "acme", got)
		require.NoError(t, b.QueryRow(ctx, "SELECT current_setting('app.tenant', true)").Scan(&got))
		assert.Equal(t, "globex", got)
	}
}

// pg_prepared_statements shows a client its own statements, under its own
// names, in every query mode, and stops showing one it deallocated, as on
// Postgres; not the server connection's, which kproxy names itself and
// which other clients share.
func TestPgPreparedStatementsListsTheClientsOwnStatements(t *testing.T) {
	p := startProxy(t, transactionMode(1))
	ctx := context.Background()
	other := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := other.PgConn().Prepare(ctx, "others", "select 42", nil)
	require.NoError(t, err)

	const list = "SELECT name, statement, parameter_types::text, from_sql FROM pg_prepared_statements WHERE name <> $1 ORDER BY name"
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeCacheStatement}
	run := func(dsn string, mode pgx.QueryExecMode) []string {
		conn := connect(t, dsn, mode)
		var got []string
		look := func(step string) {
			rows, err := conn.Query(ctx, list, "none")
			require.NoError(t, err)
			for rows.Next() {
				var name, stmt, types string
				var fromSQL bool
				require.NoError(t, rows.Scan(&name, &stmt, &types, &fromSQL))
				got = append(got, fmt.Sprintf("%s: %s %q %s %v", step, name, stmt, types, fromSQL))
			}
			require.NoError(t, rows.Err())
			got = append(got, step+" done")
		}
		pc := conn.PgConn()
		look("none")
		_, err := pc.Prepare(ctx, "a", "select 42", nil)
		require.NoError(t, err)
		_, err = pc.Prepare(ctx, "b", "select $1::int + $2", nil)
		require.NoError(t, err)
		look("two")
		require.NoError(t, pc.Deallocate(ctx, "a"))
		look("one")
		_, err = conn.Exec(ctx, "DEALLOCATE b")
		require.NoError(t, err)
		look("gone")
		_, err = conn.Exec(ctx, "PREPARE sqlp (int) AS SELECT $1")
		require.NoError(t, err)
		look("sql")
		var n int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_prepared_statements p WHERE p.statement = 'select 42'").Scan(&n))
		got = append(got, fmt.Sprintf("select 42: %d", n))
		_, err = conn.Exec(ctx, "DEALLOCATE sqlp") // unpins the client
		require.NoError(t, err)
		look("end")
		return got
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			want := run(directDSN("postgres", "postgres", ""), mode)
			for _, line := range []string{`two: a "select 42" {} false`, `two: b "select $1::int + $2" {integer,integer} false`,
				`sql: sqlp "PREPARE sqlp (int) AS SELECT $1" {integer} true`, "select 42: 0"} {
				require.Contains(t, want, line, "Postgres' own answer")
			}
			assert.Equal(t, want, run(p.DSN("postgres", "postgres", ""), mode))
		})
	}
}
