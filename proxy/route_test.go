package proxy_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
)

// withReplica adds the test cluster's replica to a transaction-mode proxy.
func withReplica(max int) func(*config.Config) {
	return func(c *config.Config) {
		transactionMode(max)(c)
		b, err := config.ParseBackend(pgtest.Get().ReplicaAddr)
		if err != nil {
			panic(err)
		}
		c.Replicas = []config.Backend{b}
		c.Routing.CheckPeriod = 100 * time.Millisecond
		c.Routing.ReadYourWritesWait = 2 * time.Second // generous: the machine may be loaded
	}
}

func onReplica(t *testing.T, conn *pgx.Conn, sql string) bool {
	t.Helper()
	var r bool
	require.NoError(t, conn.QueryRow(context.Background(), sql).Scan(&r), sql)
	return r
}

func TestReadsGoToTheReplicaAndEverythingElseToThePrimary(t *testing.T) {
	p := startProxy(t, withReplica(4))
	ctx := context.Background()
	// Production's synchronous_commit=on (the test cluster turns it off):
	// a commit reaches the replica at once.
	conn := connect(t, p.DSN("postgres", "postgres", "options='-c synchronous_commit=on'"), pgx.QueryExecModeSimpleProtocol)
	_, err := conn.Exec(ctx, "CREATE SEQUENCE IF NOT EXISTS route_seq")
	require.NoError(t, err)

	assert.True(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"), "a plain read")
	assert.False(t, onReplica(t, conn, "SELECT pg_is_in_recovery() FROM (SELECT nextval('route_seq')) s"), "nextval writes")
	assert.False(t, onReplica(t, conn, "/* kproxy:primary */ SELECT pg_is_in_recovery()"), "a primary hint")

	_, err = conn.Exec(ctx, "SET kproxy.target = 'primary'")
	require.NoError(t, err)
	assert.False(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"), "kproxy.target = primary")
	// Neither a hint nor the setting sends a write to a replica.
	assert.False(t, onReplica(t, conn, "/* kproxy:replica */ SELECT pg_is_in_recovery() FROM (SELECT nextval('route_seq')) s"),
		"a replica hint on a write")
	_, err = conn.Exec(ctx, "SET kproxy.target = 'replica'")
	require.NoError(t, err)
	assert.True(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"), "kproxy.target = replica")
	assert.False(t, onReplica(t, conn, "SELECT pg_is_in_recovery() FROM (SELECT nextval('route_seq')) s"),
		"kproxy.target = replica, on a write")
	_, err = conn.Exec(ctx, "SET kproxy.target = 'auto'")
	require.NoError(t, err)
	assert.True(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"), "kproxy.target = auto")

	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	require.NoError(t, err)
	var inRecovery bool
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
	assert.True(t, inRecovery, "BEGIN READ ONLY")
	require.NoError(t, tx.Commit(ctx))

	tx, err = conn.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
	assert.False(t, inRecovery, "a read-write transaction")
	require.NoError(t, tx.Commit(ctx))

	// The extended protocol routes the same way, named statements included.
	ext := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeCacheStatement)
	for range 3 {
		assert.True(t, onReplica(t, ext, "SELECT pg_is_in_recovery()"))
	}
	rs := p.Server.Stats().Routing
	assert.Positive(t, rs.RoutedReplica)
	require.Len(t, rs.Replicas, 1)
	assert.True(t, rs.Replicas[0].Healthy)
}

func TestASessionReadsItsOwnWrites(t *testing.T) {
	p := startProxy(t, withReplica(4))
	ctx := context.Background()
	admin := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	_, err := admin.Exec(ctx, "DROP TABLE IF EXISTS ryw; CREATE TABLE ryw (id int PRIMARY KEY)")
	require.NoError(t, err)

	conn := connect(t, p.DSN("postgres", "postgres", "options='-c synchronous_commit=on'"), pgx.QueryExecModeExec)
	iterations := 10000
	if testing.Short() {
		iterations = 1000
	}
	onReplicaReads := 0
	for i := range iterations {
		_, err := conn.Exec(ctx, "INSERT INTO ryw VALUES ($1)", i)
		require.NoError(t, err)
		var found, replica bool
		require.NoError(t, conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM ryw WHERE id = $1), pg_is_in_recovery()", i).Scan(&found, &replica))
		require.True(t, found, "iteration %d read stale data (on the replica: %v)", i, replica)
		if replica {
			onReplicaReads++
		}
	}
	rs := p.Server.Stats().Routing
	t.Logf("%d insert-then-read iterations: 0 stale reads, %d reads (%.1f%%) served by the replica, %d stale reads avoided",
		iterations, onReplicaReads, 100*float64(onReplicaReads)/float64(iterations), rs.StaleReadsAvoided)
}

func TestPgbenchSelectOnlyIsServedMostlyByTheReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	pgbench := pgClient(t, "pgbench")
	p := startProxy(t, withReplica(8))
	const database = "kproxy_pgbench"
	ensurePgbenchDatabase(t, database)
	replica := connect(t, pgtest.Get().DSN(pgtest.Get().ReplicaAddr, database, pgtest.Superuser), pgx.QueryExecModeExec)
	commits := func() int64 {
		var n int64
		require.NoError(t, replica.QueryRow(context.Background(), "SELECT pg_stat_get_db_xact_commit(oid) FROM pg_database WHERE datname = $1", database).Scan(&n))
		return n
	}
	for _, script := range []string{"select-only", "tpcb-like"} {
		t.Run(script, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _ = replica.Exec(ctx, "SELECT pg_stat_clear_snapshot()")
			before := commits()
			stdout, stderr, err := runClient(ctx, proxyEnv(p, database, "pgbench"), "", pgbench,
				"-n", "-b", script, "-c", "16", "-j", "2", "-T", "3", "-M", "simple")
			out := stdout + stderr
			require.NoError(t, err, out)
			m := pgbenchFailedRE.FindStringSubmatch(out)
			require.NotNil(t, m, out)
			assert.Equal(t, "0", m[1], out)
			m = pgbenchProcessedRE.FindStringSubmatch(out)
			require.NotNil(t, m, out)
			processed, _ := strconv.Atoi(m[1])
			// The statistics collector reports with a delay.
			time.Sleep(700 * time.Millisecond)
			_, _ = replica.Exec(ctx, "SELECT pg_stat_clear_snapshot()")
			served := commits() - before
			share := float64(served) / float64(processed)
			t.Logf("pgbench %s: %d transactions, %d committed on the replica (%.0f%%)", script, processed, served, 100*share)
			if script == "select-only" {
				assert.GreaterOrEqual(t, share, 0.4, "replica share")
			}
			assert.NotContains(t, strings.ToLower(out), "read-only transaction", "a write reached the replica")
		})
	}
	t.Logf("routing: %+v", p.Server.Stats().Routing)
}

// ensurePgbenchDatabase makes sure database holds pgbench's tables, and
// that the replica has them too.
func ensurePgbenchDatabase(t *testing.T, database string) {
	t.Helper()
	ensureDatabase(t, database)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := connect(t, directDSN(pgtest.Superuser, database, ""), pgx.QueryExecModeExec)
	var exists bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT to_regclass('pgbench_accounts') IS NOT NULL").Scan(&exists))
	if !exists {
		host, port, _ := strings.Cut(pgtest.Get().PrimaryAddr, ":")
		env := []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + pgtest.Superuser, "PGDATABASE=" + database}
		stdout, stderr, err := runClient(ctx, env, "", pgClient(t, "pgbench"), "-i", "-s", "10", "-q")
		require.NoError(t, err, "%s%s", stdout, stderr)
	}
	require.NoError(t, pgtest.Get().WaitReplicaCaughtUp(ctx))
}

func TestCallsToVolatileUserFunctionsGoToThePrimary(t *testing.T) {
	p := startProxy(t, withReplica(4))
	ctx := context.Background()
	conn := connect(t, p.DSN("postgres", "postgres", "options='-c synchronous_commit=on'"), pgx.QueryExecModeSimpleProtocol)
	_, err := conn.Exec(ctx, `CREATE OR REPLACE FUNCTION route_bump() RETURNS bool LANGUAGE sql VOLATILE AS 'SELECT pg_is_in_recovery()'`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `CREATE OR REPLACE FUNCTION route_pure() RETURNS bool LANGUAGE sql STABLE AS 'SELECT pg_is_in_recovery()'`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return !onReplica(t, conn, "SELECT route_bump()")
	}, 5*time.Second, 50*time.Millisecond, "a volatile function must run on the primary")
	assert.True(t, onReplica(t, conn, "SELECT route_pure()"), "a stable function may run on the replica")
}

func TestReadsSurviveAReplicaKilledWithSIGKILLAndItIsReadmitted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster of its own")
	}
	c := pgtest.StartPrivate(t)
	p := startProxy(t, func(cfg *config.Config) {
		transactionMode(8)(cfg)
		var err error
		cfg.Primary, err = config.ParseBackend(c.PrimaryAddr)
		require.NoError(t, err)
		r, err := config.ParseBackend(c.ReplicaAddr)
		require.NoError(t, err)
		cfg.Replicas = []config.Backend{r}
		cfg.Routing.CheckPeriod = 100 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	type tally struct{ replica, primary, failed atomic.Int64 }
	var n tally
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const readers = 6
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conn *pgx.Conn
			for {
				select {
				case <-stop:
					if conn != nil {
						conn.Close(context.Background())
					}
					return
				default:
				}
				if conn == nil {
					var err error
					if conn, err = pgx.Connect(ctx, p.DSN("postgres", "postgres", "")); err != nil {
						n.failed.Add(1)
						time.Sleep(10 * time.Millisecond)
						continue
					}
				}
				var inRecovery bool
				if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
					n.failed.Add(1)
					conn.Close(context.Background())
					conn = nil
					continue
				}
				if inRecovery {
					n.replica.Add(1)
				} else {
					n.primary.Add(1)
				}
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	require.Eventually(t, func() bool { return n.replica.Load() > 100 }, 10*time.Second, 10*time.Millisecond, "reads reach the replica")
	require.NoError(t, c.KillReplica())
	killed := n.primary.Load()
	require.Eventually(t, func() bool { return n.primary.Load() > killed+200 }, 10*time.Second, 10*time.Millisecond,
		"reads continue on the primary")
	failedAfterKill := n.failed.Load()
	t.Logf("replica killed: %d reads failed (%d readers), reads go on on the primary", failedAfterKill, readers)
	assert.LessOrEqual(t, failedAfterKill, int64(2*readers), "only reads in flight on the dead replica may fail")

	require.NoError(t, c.RestartReplica())
	restarted := time.Now()
	onReplicaBefore := n.replica.Load()
	require.Eventually(t, func() bool { return n.replica.Load() > onReplicaBefore+10 }, 15*time.Second, 10*time.Millisecond,
		"reads return to the replica")
	readmitted := time.Since(restarted)
	t.Logf("replica readmitted %s after it came back", readmitted.Round(time.Millisecond))
	assert.Less(t, readmitted, 5*time.Second)
	t.Logf("reads failed in all: %d", n.failed.Load())
	assert.LessOrEqual(t, n.failed.Load(), int64(2*readers), "reads failed in all")
}
