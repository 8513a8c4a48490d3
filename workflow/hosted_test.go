package workflow_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/proxy"
	"github.com/kproxy/kproxy/workflow"
)

// hostedConfig loads a kproxy configuration for the test cluster's primary
// (no replica, so that a table just created is there to read) with the
// sections in yaml.
func hostedConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	text := fmt.Sprintf("primary: %s\nbackend_tls: {sslmode: disable}\npool: {max_connections: 8}\n%s", pgtest.Get().PrimaryAddr, yaml)
	path := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	cfg, err := config.Load(path, nil)
	require.NoError(t, err)
	return &cfg
}

// newHosted builds the configuration's workflows in hosted mode, on a
// cluster of their own; both are closed when the test ends.
func newHosted(t *testing.T, cfg *config.Config) (*workflow.Hosted, *pool.Cluster) {
	t.Helper()
	cluster := pool.NewCluster(cfg, zap.NewNop())
	t.Cleanup(cluster.Close)
	h, err := workflow.NewHosted(cfg, workflow.HostedOptions{
		DB:     func(db, user string) (*pool.DB, error) { return pool.NewDB(cluster, nil, db, user), nil },
		Logger: zaptest.NewLogger(t),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	return h, cluster
}

func hostedRun(t *testing.T, h *workflow.Hosted, name string, params map[string]any) (*workflow.Run, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return h.Run(ctx, name, params)
}

func primaryExec(t *testing.T, sql string) {
	t.Helper()
	_, err := pgtest.Get().PrimaryConn(t).Exec(context.Background(), sql)
	require.NoError(t, err)
}

// hook is an HTTP endpoint that echoes what it received.
type hook struct {
	mu       sync.Mutex
	bodies   []map[string]any // guarded by mu
	tokens   []string         // guarded by mu
	failures atomic.Int32     // answer 503 this many more times
}

func (k *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	k.mu.Lock()
	k.bodies = append(k.bodies, body)
	k.tokens = append(k.tokens, r.Header.Get("X-Token"))
	k.mu.Unlock()
	if k.failures.Add(-1) >= 0 {
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"received": body})
}

func TestHostedRunsAYAMLWorkflowOfSQLMapSwitchHTTPAndCacheNodes(t *testing.T) {
	primaryExec(t, `DROP TABLE IF EXISTS wf_hosted_orders;
CREATE TABLE wf_hosted_orders (id int8 PRIMARY KEY, status text NOT NULL, total numeric NOT NULL, touched int NOT NULL DEFAULT 0);
INSERT INTO wf_hosted_orders (id, status, total) VALUES (1, 'paid', 10.50), (2, 'paid', 4.25), (3, 'open', 99)`)
	k := &hook{}
	srv := httptest.NewServer(k)
	t.Cleanup(srv.Close)
	k.failures.Store(1) // the first call fails and is retried

	cfg := hostedConfig(t, fmt.Sprintf(`
workflow_resilience:
  breakers:
    hooks: {failure_threshold: 3, recovery_timeout: 1m}
  rate_limits:
    hooks: {per_second: 1000, burst: 10}
workflow_cache:
  redis_addr: %s
  redis_prefix: "kproxy-test:%d:"
workflows:
  orders:
    params: [status]
    max_concurrency: 4
    timeout: 20s
    nodes:
      - id: fetch
        kind: sql
        sql: SELECT id, total FROM wf_hosted_orders WHERE status = $1 ORDER BY id
        args: [params.status]
        cache: {ttl: 1m, key: [params.status]}
      - id: touch
        kind: map
        items: fetch.rows
        max_workers: 4
        body:
          kind: sql
          mode: transaction
          steps:
            - sql: UPDATE wf_hosted_orders SET touched = touched + 1 WHERE id = $1 RETURNING touched
              args: [item.id]
              expect_rows: 1
            - sql: SELECT $1::int8 * 10 AS score
              args: [steps.0.row.touched]
      - id: count
        kind: sql
        sql: SELECT count(*) AS n FROM wf_hosted_orders WHERE status = $1
        args: [params.status]
        cache: {store: redis, ttl: 1m}
      - id: route
        kind: switch
        on: count.rows.0.n
        cases: {"0": none}
        default: some
        inputs: {orders: fetch.rows}
      - id: notify
        kind: http
        method: POST
        url: %s/hooks/orders
        headers: {X-Token: secret}
        body: route.some
        breaker: hooks
        rate_limit: hooks
        retry: {max_attempts: 2, initial_delay: 5ms}
        after: [touch]
      - id: remember
        kind: cache
        op: set
        key: [params.status]
        value: notify.body.received.on
        ttl: 1m
      - id: recall
        kind: cache
        op: get
        key: [params.status]
        after: [remember]
      - id: nothing
        kind: sql
        sql: SELECT 'no orders are ' || $1 AS message
        args: [params.status]
        inputs: {count: route.none.on}
      - id: outcome
        kind: merge
        inputs: {some: notify.status, none: nothing.rows.0.message}
`, pgtest.Get().RedisAddr, time.Now().UnixNano(), srv.URL))
	h, _ := newHosted(t, cfg)
	assert.Equal(t, []string{"orders"}, h.Names())

	run, err := hostedRun(t, h, "orders", map[string]any{"status": "paid"})
	require.NoError(t, err)
	fetched, err := run.Lookup("fetch", "rows")
	require.NoError(t, err)
	assert.Equal(t, []map[string]any{{"id": int64(1), "total": "10.50"}, {"id": int64(2), "total": "4.25"}}, fetched)
	for i := range 2 {
		score, err := run.Lookup("touch", fmt.Sprintf("results.%d.steps.1.row.score", i))
		require.NoError(t, err)
		assert.Equal(t, int64(10), score)
	}
	route, _ := run.Result("route")
	assert.Equal(t, "some", route.(workflow.Branch).Name)
	outcome, _ := run.Result("outcome")
	assert.Equal(t, http.StatusOK, outcome)
	recalled, _ := run.Result("recall")
	assert.Equal(t, workflow.CacheEntry{Hit: true, Value: 2.0}, recalled)
	got := outcomes(run)
	assert.Equal(t, workflow.OutcomeSkipped, got["nothing"])
	assert.Equal(t, 2, nodeTrace(t, run, "notify").Attempts, "the 503 was retried")
	assert.Equal(t, 2, nodeTrace(t, run, "touch").Items)
	assert.Equal(t, "sql_query", nodeTrace(t, run, "fetch").Kind)
	k.mu.Lock()
	assert.Equal(t, []string{"secret", "secret"}, k.tokens)
	assert.Equal(t, map[string]any{
		"on":     2.0,
		"orders": []any{map[string]any{"id": 1.0, "total": "10.50"}, map[string]any{"id": 2.0, "total": "4.25"}},
	}, k.bodies[1])
	k.mu.Unlock()
	trace, ok := h.Trace(run.ID)
	require.True(t, ok)
	assert.Equal(t, workflow.OutcomeOK, trace.Outcome)

	// The second run reads fetch from the local cache and count from Redis.
	run, err = hostedRun(t, h, "orders", map[string]any{"status": "paid"})
	require.NoError(t, err)
	assert.Equal(t, workflow.OutcomeCached, outcomes(run)["fetch"])
	assert.Equal(t, workflow.OutcomeCached, outcomes(run)["count"])
	score, err := run.Lookup("touch", "results.0.steps.1.row.score")
	require.NoError(t, err)
	assert.Equal(t, int64(20), score, "the cached rows are touched again")

	// No such orders: the other branch runs.
	run, err = hostedRun(t, h, "orders", map[string]any{"status": "lost"})
	require.NoError(t, err)
	outcome, _ = run.Result("outcome")
	assert.Equal(t, "no orders are lost", outcome)
	got = outcomes(run)
	for _, id := range []string{"notify", "remember", "recall"} {
		assert.Equal(t, workflow.OutcomeSkipped, got[id], id)
	}
}

func TestHostedRunRequiresDeclaredAndReferencedParameters(t *testing.T) {
	cfg := hostedConfig(t, `
workflows:
  w:
    params: [a, b]
    nodes:
      - {id: q, kind: sql, sql: "SELECT $1::text AS a", args: [params.a]}
`)
	h, _ := newHosted(t, cfg)
	_, err := hostedRun(t, h, "w", map[string]any{})
	require.ErrorIs(t, err, workflow.ErrMissingParam)
	assert.Contains(t, err.Error(), `"a"`)
	assert.Contains(t, err.Error(), `"b"`)
	_, err = hostedRun(t, h, "nope", nil)
	require.ErrorIs(t, err, workflow.ErrUnknownWorkflow)
	info, ok := h.Info("w")
	require.True(t, ok)
	assert.Equal(t, workflow.HostedInfo{Name: "w", Database: "postgres", User: "postgres", Params: []string{"a", "b"}, Nodes: []string{"q"}}, info)
}

func TestHostedReportsEveryWorkflowsBuildProblemsAtOnce(t *testing.T) {
	cfg := hostedConfig(t, `
workflows:
  lost:
    nodes:
      - {id: x, kind: sql, sql: SELECT $1, args: [nosuch.value]}
      - {id: y, kind: merge, inputs: {a: x}, after: [ghost]}
  loop:
    nodes:
      - {id: p, kind: sql, sql: SELECT $1, args: [q.rows]}
      - {id: q, kind: sql, sql: SELECT $1, args: [p.rows]}
  fine:
    nodes:
      - {id: ok, kind: sql, sql: SELECT 1}
`)
	cluster := pool.NewCluster(cfg, zap.NewNop())
	t.Cleanup(cluster.Close)
	_, err := workflow.NewHosted(cfg, workflow.HostedOptions{
		DB: func(db, user string) (*pool.DB, error) { return pool.NewDB(cluster, nil, db, user), nil },
	})
	require.Error(t, err)
	msg := err.Error()
	for _, want := range []string{`workflow "lost"`, `unknown node "nosuch"`, `unknown node "ghost"`, `workflow "loop"`, "undeclared cycle among nodes p, q"} {
		assert.Contains(t, msg, want)
	}
	assert.NotContains(t, msg, `"fine"`)
	assert.ErrorIs(t, err, workflow.ErrUnknownNode)
	assert.ErrorIs(t, err, workflow.ErrUndeclaredCycle)
}

func TestHostedMapBodyRetriesAndFallsBackPerItem(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Query().Get("id") == "bad" {
			http.Error(w, "no", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"id": %q}`, r.URL.Query().Get("id"))
	}))
	t.Cleanup(srv.Close)
	cfg := hostedConfig(t, fmt.Sprintf(`
workflow_resilience:
  rate_limits: {api: {per_second: 1000, burst: 5}}
workflows:
  each:
    nodes:
      - id: call
        kind: map
        items: params.ids
        max_workers: 2
        body:
          kind: http
          url: %s/item
          inputs: {query: item}
          retry: {max_attempts: 2, initial_delay: 1ms}
          rate_limit: api
          fallback: {value: {id: missing}}
`, srv.URL))
	h, _ := newHosted(t, cfg)
	run, err := hostedRun(t, h, "each", map[string]any{"ids": []any{
		map[string]any{"id": "a"}, map[string]any{"id": "bad"}, map[string]any{"id": "c"},
	}})
	require.NoError(t, err)
	ids := make([]any, 3)
	for i := range ids {
		ids[i], err = run.Lookup("call", fmt.Sprintf("results.%d.body.id", i))
		if err != nil {
			ids[i], err = run.Lookup("call", fmt.Sprintf("results.%d.id", i))
		}
		require.NoError(t, err)
	}
	assert.Equal(t, []any{"a", "missing", "c"}, ids)
	assert.EqualValues(t, 4, calls.Load(), "the failing item was tried twice")
}

func TestHostedReloadKeepsBreakersAndTracesAndRefusesABrokenConfiguration(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	base := fmt.Sprintf(`
workflow_resilience:
  breakers: {api: {failure_threshold: 1, recovery_timeout: 1h}}
workflows:
  call:
    nodes:
      - {id: get, kind: http, url: %s, breaker: api}
`, srv.URL)
	h, _ := newHosted(t, hostedConfig(t, base))
	first, err := hostedRun(t, h, "call", nil)
	require.Error(t, err)
	assert.NotErrorIs(t, err, workflow.ErrBreakerOpen)

	require.NoError(t, h.Reload(hostedConfig(t, base+`
  more:
    nodes:
      - {id: one, kind: sql, sql: SELECT 1}
`)))
	assert.Equal(t, []string{"call", "more"}, h.Names())
	_, err = hostedRun(t, h, "call", nil)
	assert.ErrorIs(t, err, workflow.ErrBreakerOpen, "the breaker opened before the reload stays open")
	_, ok := h.Trace(first.ID)
	assert.True(t, ok, "the workflow's traces survive the reload")

	err = h.Reload(hostedConfig(t, base+`
  broken:
    nodes:
      - {id: one, kind: sql, sql: SELECT $1, args: [two.x]}
`))
	require.ErrorIs(t, err, workflow.ErrUnknownNode)
	assert.Equal(t, []string{"call", "more"}, h.Names(), "a failed reload changes nothing")
}

// post sends params to POST /workflows/{name}/runs and decodes the answer.
func post(t *testing.T, base, name, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(base+"/workflows/"+name+"/runs", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
	return resp.StatusCode, out
}

func get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

func TestHostedHandlerRunsWorkflowsAndAnswersWithFittingStatuses(t *testing.T) {
	cfg := hostedConfig(t, `
workflows:
  add:
    nodes:
      - {id: sum, kind: sql, sql: "SELECT $1::int8 + $2::int8 AS total", args: [params.a, params.b]}
  broken:
    nodes:
      - {id: divide, kind: sql, sql: SELECT 1/0 AS x}
      - {id: after, kind: sql, sql: SELECT 1, after: [divide]}
  slow:
    timeout: 200ms
    nodes:
      - {id: sleep, kind: sql, sql: SELECT pg_sleep(10)}
`)
	h, _ := newHosted(t, cfg)
	srv := httptest.NewServer(h.Handler())
	t.Cleanup(srv.Close)

	status, body := get(t, srv.URL+"/workflows")
	require.Equal(t, http.StatusOK, status)
	list := body["workflows"].([]any)
	require.Len(t, list, 3)
	assert.Equal(t, map[string]any{"name": "add", "database": "postgres", "user": "postgres",
		"params": []any{"a", "b"}, "nodes": []any{"sum"}, "timeout_ms": 0.0}, list[0])

	status, body = post(t, srv.URL, "add", `{"a": 40, "b": 2}`)
	require.Equal(t, http.StatusOK, status, "%v", body)
	assert.Equal(t, 42.0, body["results"].(map[string]any)["sum"].(map[string]any)["rows"].([]any)[0].(map[string]any)["total"])
	id := body["run_id"].(string)
	assert.Equal(t, id, body["trace"].(map[string]any)["run_id"])
	status, trace := get(t, srv.URL+"/workflows/runs/"+id)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "ok", trace["outcome"])
	assert.Equal(t, "add", trace["workflow"])

	tests := []struct {
		name, workflow, body string
		status               int
		error                string
	}{
		{"an unknown workflow is not found", "nope", `{}`, http.StatusNotFound, `unknown workflow "nope"`},
		{"a body that is not JSON is a bad request", "add", `{"a": `, http.StatusBadRequest, "parameters"},
		{"a JSON array is a bad request", "add", `[1, 2]`, http.StatusBadRequest, "want a JSON object, got an array"},
		{"two JSON values are a bad request", "add", `{} {}`, http.StatusBadRequest, "more than one JSON value"},
		{"missing parameters are unprocessable", "add", `{"a": 1}`, http.StatusUnprocessableEntity, `missing run parameter "b"`},
		{"an oversized body is too large", "add", `{"a": "` + strings.Repeat("x", 1<<20) + `"}`, http.StatusRequestEntityTooLarge, "larger than"},
		{"a failed run is a server error", "broken", ``, http.StatusInternalServerError, "division by zero"},
		{"a run past its timeout is a gateway timeout", "slow", `{}`, http.StatusGatewayTimeout, "workflow run timed out after 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := post(t, srv.URL, tt.workflow, tt.body)
			assert.Equal(t, tt.status, status, "%v", body)
			assert.Contains(t, body["error"], tt.error)
		})
	}

	status, body = post(t, srv.URL, "broken", `{}`)
	require.Equal(t, http.StatusInternalServerError, status)
	nodes := body["trace"].(map[string]any)["nodes"].([]any)
	assert.Equal(t, "failed", nodes[0].(map[string]any)["outcome"])
	assert.Equal(t, "upstream_failed", nodes[1].(map[string]any)["outcome"])
	assert.NotEmpty(t, body["run_id"])

	status, body = get(t, srv.URL+"/workflows/runs/0123")
	assert.Equal(t, http.StatusNotFound, status)
	assert.Contains(t, body["error"], "no trace")
}

func TestHostedWorkflowSQLRunsOnTheProxysPools(t *testing.T) {
	cfg := hostedConfig(t, `
workflows:
  three:
    nodes:
      - {id: a, kind: sql, sql: SELECT 1 AS one}
      - {id: b, kind: sql, sql: "SELECT $1::int8 + 1 AS two", args: [a.rows.0.one]}
      - {id: c, kind: sql, mode: exec, sql: SELECT 3}
`)
	cluster := pool.NewCluster(cfg, zap.NewNop())
	t.Cleanup(cluster.Close)
	srv, err := proxy.New(cfg, cluster, zaptest.NewLogger(t))
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.NoError(t, <-served)
	})
	h, err := workflow.NewHosted(cfg, workflow.HostedOptions{
		DB: func(db, user string) (*pool.DB, error) { return pool.NewDB(cluster, srv.Classifier(), db, user), nil },
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close()) })
	mux := http.NewServeMux()
	mux.Handle("/workflows", h.Handler())
	mux.Handle("/workflows/", h.Handler())
	mux.Handle("/", srv.AdminHandler())
	admin := httptest.NewServer(mux)
	t.Cleanup(admin.Close)

	executed := func() []float64 {
		status, stats := get(t, admin.URL+"/stats")
		require.Equal(t, http.StatusOK, status)
		var out []float64
		for _, p := range stats["pools"].([]any) {
			out = append(out, p.(map[string]any)["queries"].(map[string]any)["executed"].(float64))
		}
		return out
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://postgres@"+ln.Addr().String()+"/postgres?sslmode=disable")
	require.NoError(t, err)
	defer conn.Close(ctx)
	var one int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&one))
	before := executed()
	require.Len(t, before, 1, "the network client's pool")

	status, body := post(t, admin.URL, "three", `{}`)
	require.Equal(t, http.StatusOK, status, "%v", body)
	after := executed()
	require.Len(t, after, 1, "the workflow used the same pool")
	assert.GreaterOrEqual(t, after[0]-before[0], 3.0)

	// And the network client still uses it after the workflow.
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&one))
	assert.Len(t, executed(), 1)
}

func TestHostedCycleLoopsUntilItsConditionHolds(t *testing.T) {
	cfg := hostedConfig(t, `
workflows:
  count:
    params: [start]
    nodes:
      - {id: step, kind: sql, sql: "SELECT $1::int8 + 1 AS n", args: [n], inputs: {n: params.start}}
      - {id: check, kind: switch, on: step.rows.0.n, cases: {"3": done}, default: again}
      - {id: report, kind: sql, sql: "SELECT 'reached ' || $1::int8 AS message", args: [check.done.on]}
    cycles:
      - {name: up, from: check.again.on, to: step, input: n, max_iterations: 10, until: check.done}
`)
	h, _ := newHosted(t, cfg)
	run, err := hostedRun(t, h, "count", map[string]any{"start": 0})
	require.NoError(t, err)
	msg, err := run.Lookup("report", "rows.0.message")
	require.NoError(t, err)
	assert.Equal(t, "reached 3", msg)
	require.Len(t, run.Trace.Cycles, 1)
	assert.Equal(t, 3, run.Trace.Cycles[0].Iterations)
	assert.True(t, run.Trace.Cycles[0].Converged)

	run, err = hostedRun(t, h, "count", map[string]any{"start": 5})
	require.ErrorIs(t, err, workflow.ErrNotConverged)
	assert.Equal(t, 10, run.Trace.Cycles[0].Iterations)
}

func TestHostedReloadedNodeDoesNotReadWhatItsOldVersionCached(t *testing.T) {
	conf := func(value int) *config.Config {
		return hostedConfig(t, fmt.Sprintf(`
workflows:
  v:
    nodes:
      - {id: q, kind: sql, sql: "SELECT %d AS v", cache: {ttl: 1h}}
`, value))
	}
	h, _ := newHosted(t, conf(1))
	for range 2 {
		run, err := hostedRun(t, h, "v", nil)
		require.NoError(t, err)
		v, _ := run.Lookup("q", "rows.0.v")
		assert.Equal(t, int64(1), v)
	}
	require.NoError(t, h.Reload(conf(2)))
	run, err := hostedRun(t, h, "v", nil)
	require.NoError(t, err)
	v, _ := run.Lookup("q", "rows.0.v")
	assert.Equal(t, int64(2), v)
	assert.Equal(t, workflow.OutcomeOK, outcomes(run)["q"])
}
