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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
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
	host, port, _ := strings.Cut(c.PrimaryAddr, ":")
	pgbench := pgClient(t, "pgbench")
	stdout, stderr, err := runClient(ctx, []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + pgtest.Superuser, "PGDATABASE=postgres"},
		"", pgbench, "-i", "-s", "1", "-q")
	require.NoError(t, err, "%s%s", stdout, stderr)
	require.NoError(t, c.WaitReplicaCaughtUp(ctx))

	// pgbench -S load through kproxy for the whole test.
	type benchResult struct {
		out string
		err error
	}
	bench := make(chan benchResult, 1)
	go func() {
		stdout, stderr, err := runClient(ctx, proxyEnv(p, "postgres", "pgbench"), "", pgbench,
			"-n", "-S", "-c", "4", "-j", "2", "-T", "8", "-M", "simple")
		bench <- benchResult{stdout + stderr, err}
	}()

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
					if n.failed.Add(1) <= 3 {
						t.Logf("a read failed: %v", err)
					}
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

	res := <-bench
	require.NoError(t, res.err, res.out)
	m := pgbenchFailedRE.FindStringSubmatch(res.out)
	require.NotNil(t, m, res.out)
	processed := pgbenchProcessedRE.FindStringSubmatch(res.out)
	require.NotNil(t, processed, res.out)
	t.Logf("pgbench -S through the kill: %s transactions, %s failed", processed[1], m[1])
	assert.NotContains(t, res.out, "aborted", "only clients with a statement in flight may fail")
	t.Logf("routing: %+v", p.Server.Stats().Routing)
}

func TestAWriteAReplicaRefusesIsReplayedOnThePrimaryAndItsShapeRemembered(t *testing.T) {
	ctx := context.Background()
	admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
	_, err := admin.Exec(ctx, `CREATE TABLE IF NOT EXISTS replay_log (n int, mode text);
TRUNCATE replay_log;
CREATE OR REPLACE FUNCTION replay_touch(n int, mode text) RETURNS int LANGUAGE sql VOLATILE
  AS 'INSERT INTO replay_log VALUES (n, mode) RETURNING n'`)
	require.NoError(t, err)
	require.NoError(t, pgtest.Get().WaitReplicaCaughtUp(ctx))
	replica := connect(t, pgtest.Get().DSN(pgtest.Get().ReplicaAddr, "postgres", pgtest.Superuser), pgx.QueryExecModeExec)
	require.Eventually(t, func() bool {
		var ok bool
		return replica.QueryRow(ctx, "SELECT to_regprocedure('replay_touch(int,text)') IS NOT NULL").Scan(&ok) == nil && ok
	}, 10*time.Second, 20*time.Millisecond, "the function reaches the replica")

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			// Declared read-only by mistake: the classifier sends it to the replica.
			p := startProxy(t, func(c *config.Config) {
				withReplica(4)(c)
				c.Routing.ReadOnlyFunctions = []string{"replay_touch"}
			})
			conn := connect(t, p.DSN("postgres", "postgres", ""), mode)
			tag := mode.String()
			for i := range 3 {
				var n int
				require.NoError(t, conn.QueryRow(ctx, "SELECT replay_touch($1, $2)", i, tag).Scan(&n), "call %d", i)
				assert.Equal(t, i, n)
			}
			rs := p.Server.Stats().Routing
			assert.Equal(t, int64(1), rs.ReplayedOnPrimary, "replayed once; then the shape goes to the primary")
			var rows, distinct int
			require.NoError(t, admin.QueryRow(ctx, "SELECT count(*), count(DISTINCT n) FROM replay_log WHERE mode = $1", tag).Scan(&rows, &distinct))
			assert.Equal(t, 3, rows, "each call wrote exactly once")
			assert.Equal(t, 3, distinct)
			assert.True(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"), "reads still go to the replica")

			// In a read-only transaction the refusal is the client's answer.
			tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
			require.NoError(t, err)
			_, err = tx.Exec(ctx, "SELECT replay_touch(99, 'ro')")
			var pe *pgconn.PgError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, "25006", pe.Code)
			require.NoError(t, tx.Rollback(ctx))
		})
	}
}

// pipelineInRecovery runs statements in one pipeline, with a Sync after
// the ones syncAfter marks, and returns what each statement's single
// boolean column said.
func pipelineInRecovery(t *testing.T, conn *pgx.Conn, stmts []string, syncAfter []bool) []bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pl := conn.PgConn().StartPipeline(ctx)
	syncs := 0
	for i, s := range stmts {
		pl.SendQueryParams(s, nil, nil, nil, nil)
		if syncAfter[i] {
			require.NoError(t, pl.Sync())
			syncs++
		}
	}
	require.NoError(t, pl.Flush())
	var got []bool
	for syncs > 0 {
		res, err := pl.GetResults()
		require.NoError(t, err)
		switch r := res.(type) {
		case *pgconn.ResultReader:
			out := r.Read()
			require.NoError(t, out.Err)
			require.Len(t, out.Rows, 1)
			got = append(got, string(out.Rows[0][0]) == "t")
		case *pgconn.PipelineSync:
			syncs--
		}
	}
	require.NoError(t, pl.Close())
	return got
}

func TestAPipelinedWriteBehindAReadGoesToThePrimary(t *testing.T) {
	ctx := context.Background()
	admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
	_, err := admin.Exec(ctx, `CREATE TABLE IF NOT EXISTS pipeline_log (n int); TRUNCATE pipeline_log`)
	require.NoError(t, err)
	require.NoError(t, pgtest.Get().WaitReplicaCaughtUp(ctx))
	p := startProxy(t, withReplica(4))
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	read := "SELECT pg_is_in_recovery()"
	write := "INSERT INTO pipeline_log VALUES (1) RETURNING pg_is_in_recovery()"

	// Two transactions: the read may stay on the replica, the write moves.
	got := pipelineInRecovery(t, conn, []string{read, write}, []bool{true, true})
	assert.Equal(t, []bool{true, false}, got)
	assert.Zero(t, p.Server.Stats().Routing.ReplayedOnPrimary)

	// One implicit transaction: it starts on the replica, which refuses
	// the write; nothing has reached the client, so all of it runs on the
	// primary.
	got = pipelineInRecovery(t, conn, []string{read, write}, []bool{false, true})
	assert.Equal(t, []bool{false, false}, got)
	assert.Equal(t, int64(1), p.Server.Stats().Routing.ReplayedOnPrimary)
	var n int
	require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM pipeline_log").Scan(&n))
	assert.Equal(t, 2, n)
}

func TestAReplicaWhoseConnectionsKeepFailingStopsReceivingReads(t *testing.T) {
	p := startProxy(t, withReplica(4))
	ctx := context.Background()
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	replica := connect(t, pgtest.Get().DSN(pgtest.Get().ReplicaAddr, "postgres", pgtest.Superuser), pgx.QueryExecModeExec)
	replicaAddr := pgtest.Get().ReplicaAddr
	_ = replicaAddr

	// Kill kproxy's replica connections, and only those, as a flaky
	// network would: each round ejects the replica and costs it health.
	replicaStats := func() pool.ReplicaStats { return p.Server.Stats().Routing.Replicas[0] }
	for round := range 4 {
		require.Eventually(t, func() bool { return replicaStats().Healthy }, 10*time.Second, 10*time.Millisecond, "round %d", round)
		require.Eventually(t, func() bool { return onReplica(t, conn, "SELECT pg_is_in_recovery()") }, 10*time.Second, 10*time.Millisecond)
		ejections := replicaStats().Ejections
		for _, ps := range p.Server.Stats().Pools {
			if ps.Backend != replicaAddr {
				continue
			}
			for _, sv := range ps.Servers {
				_, err := replica.Exec(ctx, "SELECT pg_terminate_backend($1)", int(sv.PID))
				require.NoError(t, err)
			}
		}
		// The next read on a killed connection fails; kproxy runs it on
		// the primary and ejects the replica.
		require.Eventually(t, func() bool {
			var r bool
			require.NoError(t, conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&r))
			return replicaStats().Ejections > ejections
		}, 10*time.Second, time.Millisecond)
	}
	rs := replicaStats()
	t.Logf("replica after repeated failures: %+v", rs)
	assert.Less(t, rs.Health, 50)
	assert.False(t, rs.Healthy, "kept out below the admission health")
	assert.False(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"), "reads go to the primary")
	// Good checks bring it back.
	require.Eventually(t, func() bool { return p.Server.Stats().Routing.Replicas[0].Healthy }, 10*time.Second, 50*time.Millisecond)
	assert.True(t, onReplica(t, conn, "SELECT pg_is_in_recovery()"))
}
