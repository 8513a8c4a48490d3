package config

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadReadsWorkflowsAndFillsInTheirDefaults(t *testing.T) {
	path := writeConfig(t, `
primary: db
workflow_resilience:
  breakers:
    payments: {failure_threshold: 3, recovery_timeout: 10s, half_open_probes: 2}
  rate_limits:
    api: {per_second: 2.5, burst: 5}
workflow_cache: {local_entries: 10, redis_addr: "redis:6379"}
workflows:
  order_summary:
    database: app
    user: app
    max_concurrency: 8
    timeout: 30s
    params: [status]
    nodes:
      - id: fetch
        kind: sql
        sql: SELECT id FROM orders WHERE status = $1
        args: [params.status]
        retry: {max_attempts: 3, initial_delay: 50ms, max_delay: 1s, multiplier: 1.5}
        timeout: 2s
        fallback: {value: {rows: [], note: 7}}
        breaker: payments
        rate_limit: api
        cache: {store: redis, ttl: 30s, key: [params.status]}
      - id: each
        kind: map
        items: fetch.rows
        max_workers: 20
        timeout_per_item: 5s
        continue_on_error: true
        body:
          kind: sql
          mode: transaction
          steps:
            - {sql: "UPDATE orders SET seen = true WHERE id = $1", args: [item.id], expect_rows: 1}
            - {sql: "SELECT $1", args: [steps.0.rows_affected]}
      - id: notify
        kind: http
        method: POST
        url: https://hooks.example/orders
        headers: {X-Token: abc}
        body: each
      - id: route
        kind: switch
        on: fetch.rows_affected
        cases: {0: none}
        default: some
      - id: joined
        kind: merge
        inputs: {z: notify.status, a: route.some.on}
        after: [each]
  bare:
    nodes:
      - {id: one, kind: sql, sql: SELECT 1}
`)
	c, err := Load(path, nil)
	require.NoError(t, err)
	assert.Equal(t, Breaker{FailureThreshold: 3, RecoveryTimeout: 10 * time.Second, HalfOpenProbes: 2}, c.WorkflowResilience.Breakers["payments"])
	assert.Equal(t, RateLimit{PerSecond: 2.5, Burst: 5}, c.WorkflowResilience.RateLimits["api"])
	assert.Equal(t, WorkflowCache{LocalEntries: 10, RedisAddr: "redis:6379", RedisPrefix: "kproxy:workflow:"}, c.WorkflowCache)

	w := c.Workflows["order_summary"]
	assert.Equal(t, "app", w.Database)
	assert.Equal(t, 8, w.MaxConcurrency)
	assert.Equal(t, 30*time.Second, w.Timeout)
	assert.Equal(t, []string{"status"}, w.Params)
	require.Len(t, w.Nodes, 5)

	fetch := w.Nodes[0]
	assert.Equal(t, SQLModeQuery, fetch.Mode, "the default mode is filled in")
	assert.Equal(t, &Retry{MaxAttempts: 3, InitialDelay: 50 * time.Millisecond, MaxDelay: time.Second, Multiplier: 1.5}, fetch.Retry)
	assert.Equal(t, &Fallback{Value: map[string]any{"rows": []any{}, "note": 7}}, fetch.Fallback)
	assert.Equal(t, &NodeCache{Store: CacheStoreRedis, TTL: 30 * time.Second, Key: []string{"params.status"}}, fetch.Cache)

	each := w.Nodes[1]
	require.NotNil(t, each.Body.Node)
	body := each.Body.Node
	assert.Equal(t, SQLModeTransaction, body.Mode)
	require.Len(t, body.Steps, 2)
	assert.Equal(t, int64(1), *body.Steps[0].ExpectRows)
	assert.Nil(t, body.Steps[1].ExpectRows)
	assert.True(t, each.ContinueOnError)

	notify := w.Nodes[2]
	assert.Equal(t, Body{Ref: "each"}, notify.Body)
	assert.Equal(t, map[string]string{"X-Token": "abc"}, notify.Headers)
	assert.Equal(t, map[string]string{"0": "none"}, w.Nodes[3].Cases)

	joined := w.Nodes[4]
	assert.Equal(t, Bindings{{"z", "notify.status"}, {"a", "route.some.on"}}, joined.Inputs, "inputs keep the order written")
	assert.Equal(t, MergeModeFirst, joined.Mode)

	bare := c.Workflows["bare"]
	assert.Equal(t, DefaultWorkflowDatabase, bare.Database)
	assert.Equal(t, DefaultWorkflowUser, bare.User)
}

func TestLoadReportsEachWorkflowProblemWithItsPath(t *testing.T) {
	const prefix = "workflows.w."
	tests := []struct {
		name, nodes, path, msg string
	}{
		{"an unknown kind", `[{id: a, kind: python}]`, "nodes[0].kind", `got "python"`},
		{"a missing kind", `[{id: a}]`, "nodes[0].kind", "required"},
		{"a missing ID", `[{kind: sql, sql: SELECT 1}]`, "nodes[0].id", "required"},
		{"an ID with a dot", `[{id: a.b, kind: sql, sql: SELECT 1}]`, "nodes[0].id", "letters, digits"},
		{"a reserved ID", `[{id: params, kind: sql, sql: SELECT 1}]`, "nodes[0].id", "reserved"},
		{"a duplicate ID", `[{id: a, kind: sql, sql: SELECT 1}, {id: a, kind: sql, sql: SELECT 2}]`, "nodes[1].id", `duplicate node ID "a" (also nodes[0])`},
		{"a sql node without SQL", `[{id: a, kind: sql}]`, "nodes[0].sql", "required for a sql node in mode query"},
		{"an unknown SQL mode", `[{id: a, kind: sql, sql: x, mode: batch}]`, "nodes[0].mode", "must be query, exec or transaction"},
		{"a transaction without steps", `[{id: a, kind: sql, mode: transaction}]`, "nodes[0].steps", "required in mode transaction"},
		{"a transaction with sql", `[{id: a, kind: sql, mode: transaction, sql: x, steps: [{sql: y}]}]`, "nodes[0].sql", "not used in mode transaction"},
		{"a step without SQL", `[{id: a, kind: sql, mode: transaction, steps: [{args: [params.x]}]}]`, "nodes[0].steps[0].sql", "required"},
		{"a step reading a later step", `[{id: a, kind: sql, mode: transaction, steps: [{sql: x, args: [steps.0.row]}]}]`, "nodes[0].steps[0].args[0]", "steps.0 has not run when step 0 runs"},
		{"steps outside a transaction", `[{id: a, kind: sql, sql: x, args: [steps.0]}]`, "nodes[0].args[0]", "only defined in the args of a transaction step"},
		{"item outside a map body", `[{id: a, kind: sql, sql: x, args: [item.id]}]`, "nodes[0].args[0]", "only defined in a map body"},
		{"a reference with an empty segment", `[{id: a, kind: sql, sql: x, args: [fetch..id]}]`, "nodes[0].args[0]", "empty segment"},
		{"params without a name", `[{id: a, kind: sql, sql: x, args: [params]}]`, "nodes[0].args[0]", "write params.NAME"},
		{"a negative expected row count", `[{id: a, kind: sql, sql: x, expect_rows: -1}]`, "nodes[0].expect_rows", "must not be negative"},
		{"a key of another kind", `[{id: a, kind: sql, sql: x, url: "http://h"}]`, "nodes[0].url", "not used by a sql node"},
		{"an unknown key", `[{id: a, kind: sql, sql: x, squl: y}]`, "nodes[0].squl", "unknown key"},
		{"an http node without URL", `[{id: a, kind: http}]`, "nodes[0].url", "required (or bind an input url)"},
		{"an http node with a bad URL", `[{id: a, kind: http, url: "ftp://x"}]`, "nodes[0].url", "must be an http:// or https:// URL"},
		{"an http method in lower case", `[{id: a, kind: http, url: "http://h", method: post}]`, "nodes[0].method", "upper-case"},
		{"an http body that is a node", `[{id: a, kind: http, url: "http://h", body: {kind: sql}}]`, "nodes[0].body", "not a node"},
		{"a cache node without op", `[{id: a, kind: cache, key: [params.x]}]`, "nodes[0].op", "required: get or set"},
		{"a cache set without value", `[{id: a, kind: cache, op: set, key: [params.x]}]`, "nodes[0].value", "required"},
		{"a cache node without key", `[{id: a, kind: cache, op: get}]`, "nodes[0].key", "required"},
		{"redis without an address", `[{id: a, kind: cache, op: get, key: [params.x], store: redis}]`, "nodes[0].store", "needs workflow_cache.redis_addr"},
		{"an unknown store", `[{id: a, kind: sql, sql: x, cache: {store: memcached}}]`, "nodes[0].cache.store", "must be local or redis"},
		{"cache on a cache node", `[{id: a, kind: cache, op: get, key: [params.x], cache: {ttl: 1s}}]`, "nodes[0].cache", "not used by a cache node"},
		{"a map without items", `[{id: a, kind: map, body: {kind: sql, sql: x}}]`, "nodes[0].items", "required"},
		{"a map without body", `[{id: a, kind: map, items: params.x}]`, "nodes[0].body", "required"},
		{"a map body of another kind", `[{id: a, kind: map, items: params.x, body: {kind: switch, on: item}}]`, "nodes[0].body.kind", "a map body is a sql or http node"},
		{"a map body with an ID", `[{id: a, kind: map, items: params.x, body: {id: b, kind: sql, sql: x}}]`, "nodes[0].body.id", "not allowed in a map body"},
		{"a map body with a bad key", `[{id: a, kind: map, items: params.x, body: {kind: sql, sql: x, on: y}}]`, "nodes[0].body.on", "not used by a sql node"},
		{"a map body problem", `[{id: a, kind: map, items: params.x, body: {kind: sql}}]`, "nodes[0].body.sql", "required"},
		{"a negative max_workers", `[{id: a, kind: map, items: params.x, max_workers: -1, body: {kind: sql, sql: x}}]`, "nodes[0].max_workers", "must not be negative"},
		{"a switch without on", `[{id: a, kind: switch, default: b}]`, "nodes[0].on", "required"},
		{"a switch without branches", `[{id: a, kind: switch, on: params.x}]`, "nodes[0].cases", "cases or a default"},
		{"a branch with a dot", `[{id: a, kind: switch, on: params.x, cases: {"1": a.b}}]`, "nodes[0].cases.1", "a branch name"},
		{"a merge without inputs", `[{id: a, kind: merge}]`, "nodes[0].inputs", "required"},
		{"an unknown merge mode", `[{id: a, kind: merge, mode: zip, inputs: {x: b}}]`, "nodes[0].mode", "must be first, map, list or concat"},
		{"inputs that are not references", `[{id: a, kind: merge, inputs: {x: [b]}}]`, "nodes[0].inputs.x", "must be a reference"},
		{"a reserved input name", `[{id: a, kind: merge, inputs: {item: b}}]`, "nodes[0].inputs.item", "input name"},
		{"an unknown breaker", `[{id: a, kind: sql, sql: x, breaker: nope}]`, "nodes[0].breaker", `unknown breaker "nope"`},
		{"an unknown rate limit", `[{id: a, kind: sql, sql: x, rate_limit: nope}]`, "nodes[0].rate_limit", `unknown rate limit "nope"`},
		{"a bad duration", `[{id: a, kind: sql, sql: x, timeout: soon}]`, "nodes[0].timeout", "must be a duration"},
		{"a negative timeout", `[{id: a, kind: sql, sql: x, timeout: -1s}]`, "nodes[0].timeout", "must not be negative"},
		{"a retry multiplier below 1", `[{id: a, kind: sql, sql: x, retry: {multiplier: 0.5}}]`, "nodes[0].retry.multiplier", "at least 1"},
		{"an undeclared parameter", `[{id: a, kind: sql, sql: x, args: [params.other]}]`, "nodes[0].args[0]", `"other" is not among the workflow's params`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, "primary: db\nworkflows:\n  w:\n    params: [x, status]\n    nodes: "+tt.nodes+"\n")
			_, err := Load(path, nil)
			requireProblem(t, problemsOf(t, err), prefix+tt.path, tt.msg)
		})
	}
}

func TestLoadReportsEveryWorkflowProblemAtOnce(t *testing.T) {
	path := writeConfig(t, `
primary: db
workflow_resilience:
  breakers: {b: {failure_threshold: -1}}
  rate_limits: {r: {per_second: 0}}
workflow_cache: {local_entries: 0}
workflows:
  "bad name": {nodes: [{id: a, kind: sql, sql: x}]}
  w:
    name: other
    timeout: 1y
    max_concurrency: -2
    params: [p, p]
    nodes:
      - {id: a, kind: sql}
      - {id: a, kind: nosuch}
      - {id: c, kind: http, url: "http://h", breaker: nope, extra: 1}
    cycles:
      - {name: loop, from: params.x, to: a}
  empty: {}
`)
	_, err := Load(path, nil)
	ps := problemsOf(t, err)
	for _, want := range []struct{ path, msg string }{
		{"workflow_resilience.breakers.b.failure_threshold", "must not be negative"},
		{"workflow_resilience.rate_limits.r.per_second", "must be positive"},
		{"workflow_cache.local_entries", "at least 1"},
		{"workflows.bad name", "a workflow name must be"},
		{"workflows.w.name", `is "other"`},
		{"workflows.w.timeout", "must be a duration"},
		{"workflows.w.max_concurrency", "must not be negative"},
		{"workflows.w.params[1]", "listed twice"},
		{"workflows.w.nodes[0].sql", "required"},
		{"workflows.w.nodes[1].id", "duplicate node ID"},
		{"workflows.w.nodes[1].kind", `got "nosuch"`},
		{"workflows.w.nodes[2].breaker", "unknown breaker"},
		{"workflows.w.nodes[2].extra", "unknown key"},
		{"workflows.w.cycles[0].from", "must refer to a node's output"},
		{"workflows.w.cycles[0].input", "required"},
		{"workflows.w.cycles[0].max_iterations", "at least 1"},
		{"workflows.empty.nodes", "at least one node"},
	} {
		requireProblem(t, ps, want.path, want.msg)
	}
}

func TestReadWorkflowReadsOneWorkflowWithPathsOfItsOwnFile(t *testing.T) {
	c := validConfig()
	c.WorkflowResilience.Breakers = map[string]Breaker{"api": {}}
	path := writeConfig(t, `
name: adhoc
params: [id]
nodes:
  - {id: one, kind: sql, sql: "SELECT $1", args: [params.id], breaker: api}
`)
	w, err := ReadWorkflow(path, &c)
	require.NoError(t, err)
	assert.Equal(t, "adhoc", w.Name)
	assert.Equal(t, DefaultWorkflowDatabase, w.Database)
	assert.Equal(t, SQLModeQuery, w.Nodes[0].Mode)

	path = writeConfig(t, `
nodes:
  - {id: one, kind: sql, breaker: nope}
primary: db
`)
	_, err = ReadWorkflow(path, &c)
	ps := problemsOf(t, err)
	requireProblem(t, ps, "name", "required")
	requireProblem(t, ps, "nodes[0].sql", "required")
	requireProblem(t, ps, "nodes[0].breaker", `unknown breaker "nope"; declare it under workflow_resilience.breakers (declared: api)`)
	requireProblem(t, ps, "primary", "unknown key")

	_, err = ReadWorkflow(writeConfig(t, "nodes: [unclosed"), &c)
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "workflow: "), err.Error())
}

func TestWorkflowCacheSettingsComeFromTheEnvironmentToo(t *testing.T) {
	c, err := Load("", []string{"KPROXY_PRIMARY=db", "KPROXY_WORKFLOW_CACHE_REDIS_ADDR=r:6379", "KPROXY_WORKFLOW_CACHE_LOCAL_ENTRIES=5"})
	require.NoError(t, err)
	assert.Equal(t, WorkflowCache{LocalEntries: 5, RedisAddr: "r:6379", RedisPrefix: "kproxy:workflow:"}, c.WorkflowCache)
	_, err = Load("", []string{"KPROXY_PRIMARY=db", "KPROXY_WORKFLOWS=x"})
	requireProblem(t, problemsOf(t, err), "KPROXY_WORKFLOWS", "unknown environment variable")
}

func TestAnAliasCannotNestMapBodiesWithoutEnd(t *testing.T) {
	path := writeConfig(t, `
primary: db
workflows:
  w:
    nodes:
      - &n {id: m, kind: map, items: params.x, body: *n}
`)
	_, err := Load(path, nil)
	requireProblem(t, problemsOf(t, err), "workflows.w.nodes[0].body.body", "cannot hold another node")
}
