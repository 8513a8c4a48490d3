package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
)

// These tests drive the real libpq clients, psql and pgbench, through kproxy:
// what they send (COPY sub-protocol, CancelRequest on SIGINT, pipelined
// extended-protocol batches, named prepared statements) is what operators'
// tools send, not what a Go driver happens to send.

// pgClientDir is where Debian installs the PostgreSQL 15 client programs.
const pgClientDir = "/usr/lib/postgresql/15/bin"

// pgClient returns the path of a PostgreSQL client program, looked up on PATH
// first and then in pgClientDir. The test is skipped when it is missing.
func pgClient(t testing.TB, name string) string {
	t.Helper()
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	path := filepath.Join(pgClientDir, name)
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s is not on PATH or in %s", name, pgClientDir)
	}
	return path
}

// clientEnv is the environment of a libpq client connecting to host:port as
// the superuser. The test process's own PG* variables are dropped, and the
// locale, encoding and time zone are fixed so output can be compared.
func clientEnv(host, port, database, appName string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"LC_ALL=C",
		"PGHOST="+host,
		"PGPORT="+port,
		"PGUSER="+pgtest.Superuser,
		"PGDATABASE="+database,
		"PGAPPNAME="+appName,
		"PGSSLMODE=disable",
		"PGCONNECT_TIMEOUT=10",
		"PGCLIENTENCODING=UTF8",
		"PGTZ=UTC",
	)
}

// proxyEnv is clientEnv for the proxy p.
func proxyEnv(p *testProxy, database, appName string) []string {
	return clientEnv(p.Host, p.Port, database, appName)
}

// directEnv is clientEnv for the test cluster's primary.
func directEnv(t testing.TB, database, appName string) []string {
	t.Helper()
	host, port, err := net.SplitHostPort(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	return clientEnv(host, port, database, appName)
}

// runClient runs prog in dir and returns what it wrote to stdout and stderr.
// Cancelling ctx kills it.
func runClient(ctx context.Context, env []string, dir, prog string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// poolMode returns the config edit for the named pool mode.
func poolMode(mode string, maxConns int) func(*config.Config) {
	if mode == string(config.PoolModeSession) {
		return sessionMode(maxConns)
	}
	return transactionMode(maxConns)
}

// ensureDatabase creates database on the primary unless it exists.
func ensureDatabase(t testing.TB, database string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
	var exists bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", database).Scan(&exists))
	if exists {
		return
	}
	_, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{database}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" {
		return // created concurrently by another test binary
	}
	require.NoError(t, err)
}

var (
	pgbenchFailedRE    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	pgbenchProcessedRE = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	pgbenchTPSRE       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
)

func TestPgbenchRunsWithoutFailuresThroughBothPoolModes(t *testing.T) {
	if testing.Short() {
		t.Skip("pgbench runs take about 35 s")
	}
	pgbench := pgClient(t, "pgbench")
	const database = "kproxy_pgbench"
	ensureDatabase(t, database)

	// Initialising through kproxy loads pgbench_accounts with COPY FROM STDIN.
	{
		p := startProxy(t, transactionMode(4))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		stdout, stderr, err := runClient(ctx, proxyEnv(p, database, "pgbench-init"), "", pgbench, "-i", "-s", "10", "-q")
		require.NoError(t, err, "pgbench -i through kproxy:\n%s%s", stdout, stderr)
		require.Contains(t, stderr, "done in", "pgbench -i:\n%s%s", stdout, stderr)
		t.Logf("pgbench -i -s 10 through kproxy took %s", time.Since(start).Round(time.Millisecond))

		admin := connect(t, directDSN(pgtest.Superuser, database, ""), pgx.QueryExecModeExec)
		var accounts, branches int
		require.NoError(t, admin.QueryRow(ctx, "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_branches)").Scan(&accounts, &branches))
		require.Equal(t, 1_000_000, accounts)
		require.Equal(t, 10, branches)
	}

	type run struct {
		mode, script, protocol string
		clients                int
	}
	var runs []run
	for _, mode := range []string{"transaction", "session"} {
		for _, script := range []string{"select-only", "tpcb-like"} {
			for _, protocol := range []string{"simple", "extended", "prepared"} {
				runs = append(runs, run{mode, script, protocol, 16})
			}
		}
	}
	// Named prepared statements from many more clients than server
	// connections: kproxy shares them across server connections.
	runs = append(runs, run{"transaction", "select-only", "prepared", 64}, run{"transaction", "tpcb-like", "prepared", 64})

	var summary []string
	for _, r := range runs {
		name := fmt.Sprintf("%s/%s/%s/%d clients", r.mode, r.script, r.protocol, r.clients)
		t.Run(name, func(t *testing.T) {
			maxConns := r.clients
			if r.mode == "transaction" {
				maxConns = 8
			}
			p := startProxy(t, poolMode(r.mode, maxConns))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			args := []string{"-n", "-c", fmt.Sprint(r.clients), "-j", "2", "-T", "3", "-M", r.protocol}
			if r.script == "select-only" {
				args = append(args, "-S")
			}
			stdout, stderr, err := runClient(ctx, proxyEnv(p, database, "pgbench"), "", pgbench, args...)
			out := stdout + stderr
			require.NoError(t, err, "pgbench %s:\n%s", strings.Join(args, " "), out)
			assert.NotContains(t, strings.ToLower(out), "aborted", "pgbench output:\n%s", out)

			m := pgbenchFailedRE.FindStringSubmatch(out)
			require.NotNil(t, m, "no failed-transactions line in pgbench output:\n%s", out)
			assert.Equal(t, "0", m[1], "failed transactions; pgbench output:\n%s", out)
			m = pgbenchProcessedRE.FindStringSubmatch(out)
			require.NotNil(t, m, "no processed-transactions line in pgbench output:\n%s", out)
			var processed int
			_, err = fmt.Sscan(m[1], &processed)
			require.NoError(t, err)
			assert.Positive(t, processed, "pgbench output:\n%s", out)
			m = pgbenchTPSRE.FindStringSubmatch(out)
			require.NotNil(t, m, "no tps line in pgbench output:\n%s", out)

			for _, st := range p.Cluster.Stats() {
				assert.LessOrEqual(t, st.Created, int64(maxConns), "server connections opened for %s", st.Database)
			}
			line := fmt.Sprintf("%-48s %8s tps  %7d transactions", name, m[1], processed)
			t.Log(line)
			summary = append(summary, line)
		})
	}
	t.Logf("pgbench -j 2 -T 3 through kproxy:\n%s", strings.Join(summary, "\n"))
}

func TestPsqlCtrlCCancelsTheRunningStatement(t *testing.T) {
	psql := pgClient(t, "psql")
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, poolMode(mode, 4))
			admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			// Distinct statement texts let pg_stat_activity tell them apart.
			victimSQL := "SELECT pg_sleep(10) AS psql_victim_" + mode
			bystanderSQL := "SELECT pg_sleep(2) AS psql_bystander_" + mode
			active := func(sql string) int {
				var n int
				err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", sql).Scan(&n)
				if err != nil {
					return -1
				}
				return n
			}

			type result struct {
				stdout, stderr string
				err            error
			}
			bystanderDone := make(chan result, 1)
			go func() {
				stdout, stderr, err := runClient(ctx, proxyEnv(p, "postgres", "psql-bystander"), "", psql, "-X", "-c", bystanderSQL)
				bystanderDone <- result{stdout, stderr, err}
			}()

			var out bytes.Buffer
			victim := exec.CommandContext(ctx, psql, "-X", "-c", victimSQL)
			victim.Env = proxyEnv(p, "postgres", "psql-victim")
			victim.Stdout = &out
			victim.Stderr = &out
			victim.WaitDelay = 5 * time.Second
			require.NoError(t, victim.Start())
			exited := make(chan error, 1)
			go func() { exited <- victim.Wait() }()
			stopVictim := func() error {
				cancel()
				return <-exited
			}

			if !assert.Eventually(t, func() bool { return active(victimSQL) == 1 && active(bystanderSQL) == 1 }, 10*time.Second, 20*time.Millisecond) {
				err := stopVictim()
				t.Fatalf("the two statements never ran together on the primary; psql: %v\n%s", err, out.String())
			}

			// Ctrl-C: psql sends a CancelRequest on a new connection.
			require.NoError(t, victim.Process.Signal(os.Interrupt))
			sent := time.Now()
			var err error
			select {
			case err = <-exited:
			case <-time.After(3 * time.Second):
				err := stopVictim()
				t.Fatalf("psql still running 3 s after SIGINT (killed: %v); output:\n%s", err, out.String())
			}
			t.Logf("psql exited %s after SIGINT", time.Since(sent).Round(time.Millisecond))
			var exitErr *exec.ExitError
			require.ErrorAs(t, err, &exitErr, "psql output:\n%s", out.String())
			assert.Equal(t, 1, exitErr.ExitCode(), "psql output:\n%s", out.String())
			assert.Contains(t, out.String(), "canceling statement due to user request")
			assert.Eventually(t, func() bool { return active(victimSQL) == 0 }, time.Second, 20*time.Millisecond,
				"the cancelled statement still runs on the primary")

			r := <-bystanderDone
			require.NoError(t, r.err, "the bystander's statement failed:\n%s%s", r.stdout, r.stderr)
			assert.Contains(t, r.stdout, "(1 row)")
			assert.Empty(t, r.stderr)
		})
	}
}

// copyTableSQL creates {src} and an empty {dst} like it, and fills {src}
// with 100,000 deterministic rows whose text has everything COPY escapes or
// quotes, plus NULLs in every nullable column.
const copyTableSQL = `
DROP TABLE IF EXISTS {src}, {dst};
CREATE TABLE {src} (
	id      int PRIMARY KEY,
	label   text,
	amount  numeric,
	at      timestamptz,
	payload bytea,
	flag    boolean,
	tags    text[]
);
CREATE TABLE {dst} (LIKE {src} INCLUDING ALL);
INSERT INTO {src}
SELECT g,
	CASE
		WHEN g % 17 = 0 THEN NULL
		WHEN g % 19 = 0 THEN ''
		WHEN g % 9973 = 0 THEN repeat(E'long\tline\n', 5000)
		ELSE 'row ' || g || E'\ttab\nnewline\r\\back\\slash "quoted", comma; \\N ' || chr(1)
			|| ' ünïcødé ☃ 𝄞 ' || repeat('x', g % 23)
	END,
	CASE
		WHEN g % 13 = 0 THEN NULL
		WHEN g % 1000 = 0 THEN 'NaN'
		ELSE (g - 50000)::numeric * 1234567.891 / 7
	END,
	CASE WHEN g % 11 = 0 THEN NULL
		ELSE timestamptz '2024-02-29 12:34:56.789+00' + g * interval '1 minute 1.001 second'
	END,
	CASE WHEN g % 7 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') || '\x00ff5c0a'::bytea END,
	CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 = 0 END,
	CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['a,b', NULL, '{"x"}', g::text] END
FROM generate_series(1, 100000) AS g;
`

func TestPsqlCopyRoundTripsAHundredThousandRows(t *testing.T) {
	psql := pgClient(t, "psql")
	const rows = 100_000
	cases := []struct {
		name    string
		edit    func(*config.Config)
		options string // appended to each \copy
	}{
		{"transaction/text", transactionMode(2), ""},
		{"session/text", sessionMode(2), ""},
		{"transaction/csv", transactionMode(2), " WITH (FORMAT csv, HEADER)"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			src, dst := fmt.Sprintf("psql_copy_src_%d", i), fmt.Sprintf("psql_copy_dst_%d", i)
			admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
			_, err := admin.Exec(ctx, strings.NewReplacer("{src}", src, "{dst}", dst).Replace(copyTableSQL))
			require.NoError(t, err)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, _ = admin.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s, %s", src, dst))
			})

			p := startProxy(t, c.edit)
			dir := t.TempDir()
			start := time.Now()
			stdout, stderr, err := runClient(ctx, proxyEnv(p, "postgres", "psql-copy"), dir, psql,
				"-X", "-v", "ON_ERROR_STOP=1",
				"-c", fmt.Sprintf(`\copy %s TO 'src.out'%s`, src, c.options),
				"-c", fmt.Sprintf(`\copy %s FROM 'src.out'%s`, dst, c.options),
				"-c", fmt.Sprintf(`\copy %s TO 'dst.out'%s`, dst, c.options),
			)
			out := stdout + stderr
			require.NoError(t, err, "psql:\n%s", out)
			t.Logf("three \\copy of %d rows through kproxy took %s", rows, time.Since(start).Round(time.Millisecond))
			assert.Equal(t, 3, strings.Count(stdout, fmt.Sprintf("COPY %d\n", rows)), "psql:\n%s", out)
			assert.Empty(t, stderr)

			exported, err := os.ReadFile(filepath.Join(dir, "src.out"))
			require.NoError(t, err)
			reexported, err := os.ReadFile(filepath.Join(dir, "dst.out"))
			require.NoError(t, err)
			if c.options == "" {
				// Text format escapes newlines, so a row is a line.
				assert.Equal(t, rows, bytes.Count(exported, []byte("\n")), "lines in the exported file")
			}
			if !bytes.Equal(exported, reexported) {
				n := min(len(exported), len(reexported))
				at := n
				for j := range n {
					if exported[j] != reexported[j] {
						at = j
						break
					}
				}
				t.Fatalf("re-exported file differs from the export at byte %d (sizes %d and %d):\nexport:    %q\nre-export: %q",
					at, len(exported), len(reexported), excerpt(exported, at), excerpt(reexported, at))
			}

			const digest = "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM %s AS t"
			var srcCount, dstCount int
			var srcMD5, dstMD5 string
			require.NoError(t, admin.QueryRow(ctx, fmt.Sprintf(digest, src)).Scan(&srcCount, &srcMD5))
			require.NoError(t, admin.QueryRow(ctx, fmt.Sprintf(digest, dst)).Scan(&dstCount, &dstMD5))
			assert.Equal(t, rows, srcCount)
			assert.Equal(t, srcCount, dstCount, "rows copied")
			assert.Equal(t, srcMD5, dstMD5, "digest of the copied rows")
		})
	}
}

func TestPsqlCopyWithABadRowFailsAndTheNextStatementsWork(t *testing.T) {
	psql := pgClient(t, "psql")
	const rows = 100_000
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			table := "psql_copy_bad_" + mode
			admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
			_, err := admin.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int, v text)", table))
			require.NoError(t, err)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, _ = admin.Exec(ctx, "DROP TABLE IF EXISTS "+table)
			})

			// The server rejects row 10 while psql still streams the
			// rest, which it then drops.
			dir := t.TempDir()
			var good, bad bytes.Buffer
			for i := 1; i <= rows; i++ {
				fmt.Fprintf(&good, "%d\tvalue %d\n", i, i)
				if i == 10 {
					bad.WriteString("ten\tbad\n")
				} else {
					fmt.Fprintf(&bad, "%d\tvalue %d\n", i, i)
				}
			}
			require.NoError(t, os.WriteFile(filepath.Join(dir, "good.copy"), good.Bytes(), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.copy"), bad.Bytes(), 0o644))

			p := startProxy(t, poolMode(mode, 1))
			count := fmt.Sprintf("SELECT count(*) AS n FROM %s", table)
			psqlCmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t")
			psqlCmd.Env = proxyEnv(p, "postgres", "psql-copy-bad")
			psqlCmd.Dir = dir
			psqlCmd.WaitDelay = 5 * time.Second
			var stdout, stderr bytes.Buffer
			psqlCmd.Stdout = &stdout
			psqlCmd.Stderr = &stderr
			stdin, err := psqlCmd.StdinPipe()
			require.NoError(t, err)
			require.NoError(t, psqlCmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- psqlCmd.Wait() }()
			finish := func() error {
				_ = stdin.Close()
				return <-exited
			}

			// psql buffers its output on a pipe, so it touches a file to
			// say that the failed COPY is over.
			_, err = fmt.Fprintf(stdin, "\\copy %s FROM 'bad.copy'\n\\! touch after-bad\n", table)
			require.NoError(t, err)
			if !assert.Eventually(t, func() bool {
				_, err := os.Stat(filepath.Join(dir, "after-bad"))
				return err == nil
			}, 20*time.Second, 20*time.Millisecond) {
				err := finish()
				t.Fatalf("psql never finished the failed COPY (%v):\n%s%s", err, stdout.String(), stderr.String())
			}

			if mode == "transaction" {
				// The client is idle and not pinned, so the pool's only
				// server connection serves another client now.
				idle := assert.Eventually(t, func() bool {
					for _, st := range p.Cluster.Stats() {
						if st.Active != 0 {
							return false
						}
					}
					return true
				}, 2*time.Second, 10*time.Millisecond, "an idle psql holds a server connection after its COPY failed: %+v", p.Cluster.Stats())
				if idle {
					other := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
					otherCtx, otherCancel := context.WithTimeout(ctx, 3*time.Second)
					var n int
					assert.NoError(t, other.QueryRow(otherCtx, count).Scan(&n))
					otherCancel()
					assert.Zero(t, n, "rows left by the failed COPY")
				}
			}

			_, err = fmt.Fprintf(stdin, "%[2]s;\n\\copy %[1]s FROM 'good.copy'\n%[2]s;\n", table, count)
			require.NoError(t, err)
			err = finish()
			out := stdout.String() + stderr.String()
			require.NoError(t, err, "psql:\n%s", out) // the status of the last command
			assert.Contains(t, stderr.String(), `invalid input syntax for type integer: "ten"`, "psql:\n%s", out)
			assert.Equal(t, fmt.Sprintf("0\nCOPY %d\n%d\n", rows, rows), stdout.String(), "psql stderr:\n%s", stderr.String())

			// The pool's only server connection is back and serves others.
			other := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
			var n int
			require.NoError(t, other.QueryRow(ctx, count).Scan(&n))
			assert.Equal(t, rows, n)
		})
	}
}

// excerpt returns up to 80 bytes of b around offset at.
func excerpt(b []byte, at int) []byte {
	return b[max(0, at-40):min(len(b), at+40)]
}

// psqlScript mixes what interactive and scripted psql sessions do. Nothing in
// its output depends on the connection (no pids, ports or timings).
const psqlScript = `\set ON_ERROR_STOP off
\set answer 42
DROP TABLE IF EXISTS psql_script_t;
CREATE TABLE psql_script_t (id int PRIMARY KEY, v text);
SELECT :answer AS answer, :'answer' AS quoted, current_setting('application_name') AS app;
INSERT INTO psql_script_t SELECT g, 'v' || g FROM generate_series(1, 5) AS g;
SELECT * FROM psql_script_t ORDER BY id;
SELECT 1 / 0 AS boom;
\echo error=:ERROR sqlstate=:SQLSTATE last=:LAST_ERROR_SQLSTATE
SELECT count(*) AS still_here FROM psql_script_t;
BEGIN;
INSERT INTO psql_script_t VALUES (6, 'six');
SELECT 1 / (id - id) FROM psql_script_t WHERE id = 6;
SELECT 'not reached in an aborted transaction';
ROLLBACK;
SELECT count(*) AS after_rollback FROM psql_script_t;
INSERT INTO psql_script_t VALUES (1, 'duplicate');
\set VERBOSITY verbose
SELECT * FROM psql_script_t_missing;
\set VERBOSITY default
SELECT 1 AS a \; SELECT 2 AS b \; SELECT 3 AS c;
SELECT 1 AS a \; SELECT 1 / 0 AS b \; SELECT 3 AS c;
SELECT 7 AS seven, 'ok' AS word, 6 * 7 = :answer AS agreed \gset
\echo seven=:seven word=:word
\if :agreed
\echo in the if branch
\endif
DO $$ BEGIN RAISE NOTICE 'notice from %', 'plpgsql'; RAISE WARNING 'and a warning'; END $$;
SHOW TimeZone;
SELECT timestamptz '2024-02-29 12:34:56+00' AS ts, 1.5::numeric / 3 AS n, NULL AS nothing;
\pset format unaligned
SELECT id, v FROM psql_script_t ORDER BY id;
\pset format aligned
BEGIN;
UPDATE psql_script_t SET v = upper(v) WHERE id <= 2;
SELECT string_agg(v, ',' ORDER BY id) FROM psql_script_t;
ROLLBACK;
SELECT string_agg(v, ',' ORDER BY id) FROM psql_script_t;
DROP TABLE psql_script_t;
`

func TestPsqlMultiStatementAndErrorsBehaveAsDirect(t *testing.T) {
	psql := pgClient(t, "psql")
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "script.sql"), []byte(psqlScript), 0o644))
	run := func(t *testing.T, env []string) (stdout, stderr string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stdout, stderr, err := runClient(ctx, env, dir, psql, "-X", "--echo-all", "-f", "script.sql")
		require.NoError(t, err, "psql:\n%s%s", stdout, stderr)
		return stdout, stderr
	}

	wantOut, wantErr := run(t, directEnv(t, "postgres", "psql-script"))
	require.Contains(t, wantErr, "division by zero", "the script's errors are missing when run directly")
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, poolMode(mode, 2))
			gotOut, gotErr := run(t, proxyEnv(p, "postgres", "psql-script"))
			assert.Equal(t, wantOut, gotOut, "stdout through kproxy differs from direct")
			assert.Equal(t, wantErr, gotErr, "stderr through kproxy differs from direct")
		})
	}
}

// A login in transaction mode takes no server connection once the pool
// knows the server's parameters: pgbench -C, which connects in a blocking
// call while its other clients hold connections mid-transaction, must not
// wait on itself.
func TestConnectionPerTransactionDoesNotQueueLoginsBehindBusyTransactions(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	pgbench := pgClient(t, "pgbench")
	const database = "kproxy_pgbench"
	ensurePgbenchDatabase(t, database)
	p := startProxy(t, transactionMode(4))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, err := runClient(ctx, proxyEnv(p, database, "pgbench"), "", pgbench,
		"-n", "-b", "tpcb-like", "-C", "-c", "12", "-j", "2", "-T", "3", "-M", "simple")
	require.NoError(t, err, out+errOut)
	m := pgbenchFailedRE.FindStringSubmatch(out)
	require.NotNil(t, m, out)
	assert.Equal(t, "0", m[1], out)
	m = pgbenchProcessedRE.FindStringSubmatch(out)
	require.NotNil(t, m, out)
	processed, _ := strconv.Atoi(m[1])
	t.Logf("pgbench -C tpcb-like, 12 clients over 4 server connections: %d transactions", processed)
	assert.Greater(t, processed, 100)
	assert.NotContains(t, out+errOut, "aborted")
}
