package proxy_test

import (
	"context"
	"io"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgbtest"
	"github.com/kproxy/kproxy/internal/pgtest"
)

// consoleShow runs SHOW what on kproxy's admin console and returns the
// column names and rows.
func consoleShow(t *testing.T, p *testProxy, what string) ([]string, [][]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, p.DSN("postgres", "kproxy", ""))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	mrr := conn.Exec(ctx, "SHOW "+what+";")
	var names []string
	var rows [][]string
	for mrr.NextResult() {
		rr := mrr.ResultReader()
		for _, f := range rr.FieldDescriptions() {
			names = append(names, f.Name)
		}
		for rr.NextRow() {
			var row []string
			for _, v := range rr.Values() {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		}
		_, err := rr.Close()
		require.NoError(t, err)
	}
	require.NoError(t, mrr.Close())
	return names, rows
}

func TestAdminConsoleColumnsMatchPgBouncers(t *testing.T) {
	pgb := pgbtest.Start(t, pgtest.Get().PrimaryAddr, "postgres")
	p := startProxy(t, transactionMode(4))
	for _, what := range []string{"pools", "stats", "servers", "clients", "databases", "config", "lists", "version"} {
		got, _ := consoleShow(t, p, what)
		assert.Equal(t, pgbtest.Columns(t, pgb, what), got, "SHOW %s", what)
	}
}

func TestAdminConsoleShowsPoolsClientsAndServers(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	ctx := context.Background()
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1")
	require.NoError(t, err)

	cols, rows := consoleShow(t, p, "pools")
	require.Len(t, rows, 1, "one pool: postgres/postgres")
	row := map[string]string{}
	for i, c := range cols {
		row[c] = rows[0][i]
	}
	assert.Equal(t, "postgres", row["database"])
	assert.Equal(t, "1", row["cl_active"], "the client in its transaction")
	assert.Equal(t, "1", row["sv_active"])
	assert.Equal(t, "transaction", row["pool_mode"])

	_, clients := consoleShow(t, p, "clients")
	assert.Len(t, clients, 1, "the console's own client is not listed")
	_, servers := consoleShow(t, p, "servers")
	assert.NotEmpty(t, servers)
	require.NoError(t, tx.Commit(ctx))
}

func TestPsqlReadsTheAdminConsole(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := []string{"PGHOST=" + p.Host, "PGPORT=" + p.Port, "PGUSER=postgres"}
	out, errOut, err := runClient(ctx, env, "", pgClient(t, "psql"), "kproxy", "-c", "SHOW POOLS")
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "cl_active")
	assert.Contains(t, out, "sv_idle")
	out, errOut, err = runClient(ctx, env, "", pgClient(t, "psql"), "kproxy", "-c", "SHOW NONSENSE")
	require.Error(t, err)
	assert.Contains(t, errOut, "unknown SHOW item")
	_ = out
}

// consoleConn connects to the admin console of p, until the test ends.
func consoleConn(t *testing.T, p *testProxy) *pgconn.PgConn {
	t.Helper()
	console, err := pgconn.Connect(context.Background(), p.DSN("postgres", "kproxy", ""))
	require.NoError(t, err)
	t.Cleanup(func() { console.Close(context.Background()) })
	return console
}

// execBehind runs sql on conn in the background; its error arrives on the
// channel.
func execBehind(ctx context.Context, conn *pgx.Conn, sql string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, sql)
		done <- err
	}()
	return done
}

// requireHeld fails if what done reports arrives within 300 ms.
func requireHeld(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("a transaction ran while paused (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
}

// requireRuns fails unless done reports success within 5 s.
func requireRuns(t *testing.T, done <-chan error, after string) {
	t.Helper()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatalf("the transaction did not run after %s", after)
	}
}

func TestPauseHoldsNewTransactionsUntilResume(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	ctx := context.Background()
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	console := consoleConn(t, p)

	_, err := console.Exec(ctx, "PAUSE").ReadAll()
	require.NoError(t, err)
	done := execBehind(ctx, conn, "SELECT 1")
	requireHeld(t, done)
	_, rows := consoleShow(t, p, "databases")
	require.NotEmpty(t, rows)
	_, err = console.Exec(ctx, "RESUME").ReadAll()
	require.NoError(t, err)
	requireRuns(t, done, "RESUME")
	_, err = console.Exec(ctx, "RELOAD").ReadAll()
	var pe *pgconn.PgError
	require.ErrorAs(t, err, &pe, "no configuration file in this test")
	assert.Equal(t, "F0000", pe.Code)
}

// PAUSE db holds back that database's transactions only, as PgBouncer's
// does; RESUME db lets them go on.
func TestPauseOfOneDatabaseHoldsOnlyItsTransactions(t *testing.T) {
	ctx := context.Background()
	admin := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	if _, err := admin.Exec(ctx, "CREATE DATABASE kproxy_pause"); err != nil {
		var pe *pgconn.PgError
		require.ErrorAs(t, err, &pe)
		require.Equal(t, "42P04", pe.Code, "creating the second database")
	}
	p := startProxy(t, transactionMode(4))
	other := connect(t, p.DSN("postgres", "kproxy_pause", ""), pgx.QueryExecModeSimpleProtocol)
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	console := consoleConn(t, p)

	_, err := console.Exec(ctx, "PAUSE kproxy_pause").ReadAll()
	require.NoError(t, err)
	done := execBehind(ctx, other, "SELECT 1")
	// The other database's transactions run meanwhile.
	bounded, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = conn.Exec(bounded, "SELECT 1")
	require.NoError(t, err, "a transaction of a database that is not paused waited")
	requireHeld(t, done)
	names, rows := consoleShow(t, p, "databases")
	name, paused := slices.Index(names, "name"), slices.Index(names, "paused")
	require.True(t, name >= 0 && paused >= 0, "SHOW DATABASES columns: %v", names)
	pausedOf := map[string]string{}
	for _, r := range rows {
		pausedOf[r[name]] = r[paused]
	}
	assert.Equal(t, "1", pausedOf["kproxy_pause"])
	assert.Equal(t, "0", pausedOf["postgres"])

	// RESUME of a database that is not paused is refused.
	_, err = console.Exec(ctx, "RESUME postgres").ReadAll()
	requireSQLState(t, err, "55000")
	_, err = console.Exec(ctx, "RESUME kproxy_pause").ReadAll()
	require.NoError(t, err)
	requireRuns(t, done, "RESUME kproxy_pause")

	// With every database paused, one cannot be resumed alone.
	_, err = console.Exec(ctx, "PAUSE").ReadAll()
	require.NoError(t, err)
	_, err = console.Exec(ctx, "RESUME kproxy_pause").ReadAll()
	requireSQLState(t, err, "55000")
	_, err = console.Exec(ctx, "RESUME").ReadAll()
	require.NoError(t, err)
	_, err = other.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
}

func TestMetricsAreServedInPrometheusFormat(t *testing.T) {
	p := startProxy(t, transactionMode(4))
	conn := connect(t, p.DSN("postgres", "postgres", ""), pgx.QueryExecModeSimpleProtocol)
	for range 5 {
		_, err := conn.Exec(context.Background(), "SELECT 1")
		require.NoError(t, err)
	}
	_, err := conn.Exec(context.Background(), "SELECT 1/0")
	require.Error(t, err)
	srv := httptest.NewServer(p.Server.AdminHandler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	text := string(body)
	assert.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	for _, want := range []string{
		"# TYPE kproxy_pool_connections gauge",
		"# TYPE kproxy_pool_queries_total counter",
		`kproxy_pool_query_errors_total{backend="`,
		"kproxy_routed_transactions_total",
		"kproxy_pool_health_score",
	} {
		assert.Contains(t, text, want)
	}
	// Every sample line parses as name{labels} value.
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, _, ok := strings.Cut(line, " ")
		require.True(t, ok, line)
		names = append(names, name)
	}
	sort.Strings(names)
	for i := 1; i < len(names); i++ {
		assert.NotEqual(t, names[i-1], names[i], "a duplicate series")
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "kproxy_pool_query_errors_total") {
			assert.True(t, strings.HasSuffix(line, " 1"), line)
		}
	}
}
