package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgtest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kproxy-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "kproxy")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		panic(err)
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersionAndHelpWork(t *testing.T) {
	out, err := exec.Command(binary, "version").CombinedOutput()
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(out), "kproxy "), string(out))

	out, err = exec.Command(binary, "--help").CombinedOutput()
	require.NoError(t, err)
	for _, flag := range []string{"-listen", "-primary", "-replica", "-pool-mode", "-admin-listen", "-config"} {
		assert.Contains(t, string(out), flag)
	}
}

func TestInvalidConfigurationReportsEveryProblemAndExits2(t *testing.T) {
	file := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(file, []byte("listen: nowhere\npool:\n  max_conections: 3\n"), 0o600))
	cmd := exec.Command(binary, "serve", "--config", file, "--pool-mode", "statement")
	cmd.Env = append(os.Environ(), "KPROXY_NO_SUCH_SETTING=1")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	assert.Equal(t, 2, exitErr.ExitCode())
	for _, want := range []string{"KPROXY_NO_SUCH_SETTING", "listen", "pool.max_conections: unknown key", "pool_mode", "primary.host: required"} {
		assert.Contains(t, string(out), want)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

type poolStats struct {
	Pools []struct {
		Max int `json:"max_connections"`
	} `json:"pools"`
}

func TestServeRunsReloadsOnSIGHUPAndDrainsOnSIGTERM(t *testing.T) {
	listen, admin := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(file, []byte("pool:\n  max_connections: 3\n"), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := kproxyCommand("serve", "--config", file, "--listen", listen, "--admin-listen", admin,
		"--primary", pgtest.Get().PrimaryAddr, "--replica", pgtest.Get().ReplicaAddr, "--pool-mode", "transaction")
	conn, exited, logs := serveAndConnect(ctx, t, cmd, listen)
	var one int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&one))

	stats := func() poolStats {
		resp, err := http.Get("http://" + admin + "/stats")
		require.NoError(t, err)
		defer resp.Body.Close()
		var s poolStats
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
		return s
	}
	maxes := func() []int {
		var out []int
		for _, p := range stats().Pools {
			out = append(out, p.Max)
		}
		return out
	}
	// The primary's pool, and the replica's if SELECT 1 went there.
	require.NotEmpty(t, maxes())
	for _, m := range maxes() {
		assert.Equal(t, 3, m)
	}

	require.NoError(t, os.WriteFile(file, []byte("pool:\n  max_connections: 7\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		for _, m := range maxes() {
			if m != 7 {
				return false
			}
		}
		return true
	}, 5*time.Second, 20*time.Millisecond, "%s", logs)

	// SIGTERM waits for the open transaction, then exits cleanly.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, tx.QueryRow(ctx, "SELECT 2").Scan(&one))
	require.NoError(t, tx.Commit(ctx))
	requireCleanExit(t, exited, logs)
	assert.Contains(t, logs.String(), "configuration reloaded")
}

// serveAndConnect starts cmd, a `kproxy serve` listening on listen, and
// returns a client connected through it once it accepts one, the channel
// its exit status arrives on, and its output. The process is killed when
// the test ends.
func serveAndConnect(ctx context.Context, t *testing.T, cmd *exec.Cmd, listen string) (*pgx.Conn, chan error, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	var conn *pgx.Conn
	require.Eventually(t, func() bool {
		var err error
		conn, err = pgx.Connect(ctx, "postgres://postgres@"+listen+"/postgres?sslmode=disable")
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "kproxy did not start: %s", logs)
	return conn, exited, logs
}

// requireCleanExit waits up to 10 s for the exit status serveAndConnect's
// process reports on exited, which must be success, and leaves it there
// for the cleanup.
func requireCleanExit(t *testing.T, exited chan error, logs *syncBuffer) {
	t.Helper()
	select {
	case err := <-exited:
		exited <- err
		require.NoError(t, err, "%s", logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("kproxy did not exit after SIGTERM:\n%s", logs)
	}
}

// syncBuffer is a bytes.Buffer that a test may read while a process writes
// to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// kproxyCommand returns the binary with args, for the test cluster's
// primary without TLS.
func kproxyCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "KPROXY_BACKEND_TLS_SSLMODE=disable", "KPROXY_PRIMARY="+pgtest.Get().PrimaryAddr)
	return cmd
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	return exitErr.ExitCode()
}

// runResult is what kproxy workflow run prints.
type runResult struct {
	RunID   string         `json:"run_id"`
	Results map[string]any `json:"results"`
	Trace   struct {
		RunID   string `json:"run_id"`
		Outcome string `json:"outcome"`
		Nodes   []struct {
			Node    string `json:"node"`
			Outcome string `json:"outcome"`
		} `json:"nodes"`
	} `json:"trace"`
	Error string `json:"error"`
}

func TestWorkflowRunRunsANamedOrFileWorkflowInProcessAndPrintsJSON(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kproxy.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
workflows:
  squares:
    params: [n]
    nodes:
      - {id: nums, kind: sql, sql: "SELECT g AS n FROM generate_series(1, $1::int) g", args: [params.n]}
      - id: sq
        kind: map
        items: nums.rows
        body: {kind: sql, sql: "SELECT $1::int8 * $1::int8 AS sq", args: [item.n]}
      - {id: big, kind: switch, on: nums.rows_affected, cases: {"3": three}, default: other}
`), 0o600))
	adhoc := filepath.Join(dir, "adhoc.yaml")
	require.NoError(t, os.WriteFile(adhoc, []byte(`
name: adhoc
nodes:
  - {id: hello, kind: sql, sql: "SELECT 'hello ' || $1 AS greeting", args: [params.who]}
`), 0o600))
	broken := filepath.Join(dir, "broken.yaml")
	require.NoError(t, os.WriteFile(broken, []byte(`
name: broken
nodes:
  - {id: divide, kind: sql, sql: SELECT 1/0}
  - {id: next, kind: sql, sql: SELECT 1, after: [divide]}
`), 0o600))
	invalid := filepath.Join(dir, "invalid.yaml")
	require.NoError(t, os.WriteFile(invalid, []byte("name: invalid\nnodes:\n  - {id: a, kind: sqll}\n  - {id: a, kind: sql}\n"), 0o600))

	run := func(args ...string) (int, runResult, string) {
		cmd := kproxyCommand(append([]string{"workflow", "run"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		code := exitCode(t, cmd.Run())
		var res runResult
		if stdout.Len() > 0 {
			require.NoError(t, json.Unmarshal(stdout.Bytes(), &res), stdout.String())
		}
		return code, res, stderr.String()
	}

	t.Run("a configured workflow runs with JSON parameters", func(t *testing.T) {
		code, res, stderr := run("squares", "--config", file, "--params-json", `{"n": 3}`)
		require.Equal(t, 0, code, stderr)
		assert.NotEmpty(t, res.RunID)
		assert.Equal(t, res.RunID, res.Trace.RunID)
		assert.Equal(t, "ok", res.Trace.Outcome)
		results := res.Results["sq"].(map[string]any)["results"].([]any)
		require.Len(t, results, 3)
		assert.Equal(t, 9.0, results[2].(map[string]any)["rows"].([]any)[0].(map[string]any)["sq"])
		assert.Equal(t, "three", res.Results["big"].(map[string]any)["branch"])
	})
	t.Run("a workflow file runs with flags after its name", func(t *testing.T) {
		code, res, stderr := run(adhoc, "--param", "who=file", "--config", file)
		require.Equal(t, 0, code, stderr)
		rows := res.Results["hello"].(map[string]any)["rows"].([]any)
		assert.Equal(t, "hello file", rows[0].(map[string]any)["greeting"])
	})
	t.Run("a failed run prints its trace and exits 1", func(t *testing.T) {
		code, res, stderr := run(broken)
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, "division by zero")
		assert.Contains(t, res.Error, "division by zero")
		assert.Equal(t, "failed", res.Trace.Outcome)
		require.Len(t, res.Trace.Nodes, 2)
		assert.Equal(t, "upstream_failed", res.Trace.Nodes[1].Outcome)
	})
	t.Run("missing parameters exit 2", func(t *testing.T) {
		code, _, stderr := run("squares", "--config", file)
		assert.Equal(t, 2, code)
		assert.Contains(t, stderr, `missing run parameter "n"`)
	})
	t.Run("an invalid workflow file reports every problem and exits 2", func(t *testing.T) {
		code, _, stderr := run(invalid)
		assert.Equal(t, 2, code)
		assert.Contains(t, stderr, `nodes[0].kind: must be sql, http, cache, map, switch or merge; got "sqll"`)
		assert.Contains(t, stderr, `nodes[1].id: duplicate node ID "a"`)
		assert.Contains(t, stderr, "nodes[1].sql: required")
	})
	t.Run("an unknown workflow exits 2", func(t *testing.T) {
		code, _, stderr := run("nope", "--config", file)
		assert.Equal(t, 2, code)
		assert.Contains(t, stderr, `"nope" is neither a configured workflow (configured: squares) nor a file`)
	})
	t.Run("bad parameters exit 2", func(t *testing.T) {
		code, _, stderr := run("squares", "--config", file, "--params-json", `[1]`)
		assert.Equal(t, 2, code)
		assert.Contains(t, stderr, "want a JSON object")
	})
}

func TestServeHostsWorkflowsOnTheAdminListenerSharingTheProxysPools(t *testing.T) {
	listen, admin := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "kproxy.yaml")
	config := `
pool: {max_connections: 4}
workflows:
  pair:
    params: [x]
    nodes:
      - {id: a, kind: sql, sql: "SELECT $1::int8 AS x", args: [params.x]}
      - {id: b, kind: sql, sql: "SELECT $1::int8 * 2 AS doubled", args: [a.rows.0.x]}
`
	require.NoError(t, os.WriteFile(file, []byte(config), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := kproxyCommand("serve", "--config", file, "--listen", listen, "--admin-listen", admin)
	conn, exited, logs := serveAndConnect(ctx, t, cmd, listen)
	defer conn.Close(ctx)
	var one int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&one))

	type queryStats struct {
		Pools []struct {
			Database string `json:"database"`
			User     string `json:"user"`
			Queries  struct {
				Executed int64 `json:"executed"`
			} `json:"queries"`
		} `json:"pools"`
	}
	executed := func() []int64 {
		resp, err := http.Get("http://" + admin + "/stats")
		require.NoError(t, err)
		defer resp.Body.Close()
		var s queryStats
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
		var out []int64
		for _, p := range s.Pools {
			out = append(out, p.Queries.Executed)
		}
		return out
	}
	before := executed()
	require.Len(t, before, 1, "the network client's pool on the primary")

	resp, err := http.Post("http://"+admin+"/workflows/pair/runs", "application/json", strings.NewReader(`{"x": 21}`))
	require.NoError(t, err)
	var res runResult
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&res))
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%+v", res)
	doubled := res.Results["b"].(map[string]any)["rows"].([]any)[0].(map[string]any)["doubled"]
	assert.Equal(t, 42.0, doubled)
	after := executed()
	require.Len(t, after, 1, "the workflow ran on the same pool")
	assert.GreaterOrEqual(t, after[0]-before[0], int64(2))

	resp, err = http.Get("http://" + admin + "/workflows/runs/" + res.RunID)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp.Body.Close()

	// SIGHUP reloads the workflows too.
	require.NoError(t, os.WriteFile(file, []byte(config+`
  solo:
    nodes:
      - {id: one, kind: sql, sql: SELECT 1}
`), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		resp, err := http.Post("http://"+admin+"/workflows/solo/runs", "application/json", nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 20*time.Millisecond, "%s", logs)

	// A workflow that does not build leaves the running ones in place.
	require.NoError(t, os.WriteFile(file, []byte(config+`
  broken:
    nodes:
      - {id: one, kind: sql, sql: SELECT $1, args: [ghost.x]}
`), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "workflows do not build")
	}, 5*time.Second, 20*time.Millisecond, "%s", logs)
	resp, err = http.Post("http://"+admin+"/workflows/solo/runs", "application/json", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	requireCleanExit(t, exited, logs)
}

func TestServeRefusesWorkflowsThatDoNotBuild(t *testing.T) {
	file := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
workflows:
  loop:
    nodes:
      - {id: p, kind: sql, sql: SELECT $1, args: [q.rows]}
      - {id: q, kind: sql, sql: SELECT $1, args: [p.rows]}
`), 0o600))
	out, err := kproxyCommand("serve", "--config", file, "--listen", freeAddr(t), "--admin-listen", "").CombinedOutput()
	assert.Equal(t, 2, exitCode(t, err))
	assert.Contains(t, string(out), `workflow "loop"`)
	assert.Contains(t, string(out), "undeclared cycle among nodes p, q")
}
