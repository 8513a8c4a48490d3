// Package workflow is kproxy's workflow runtime: workflows are graphs of
// nodes declared once, checked as a whole, and then executed any number of
// times, concurrently, by a Runtime. It gives users of the Kailash SDK's
// WorkflowBuilder and AsyncWorkflowBuilder the same concepts — nodes,
// connections between outputs and inputs, runtime parameters, switch and
// merge, parallel map, cycles, retries, circuit breakers, caches — as plain
// Go values.
//
// # Concepts
//
// A Node is anything with Run(ctx, Inputs) (any, error). Func adapts a
// function; the package provides switch (Switch, SwitchOn), Merge, parallel
// map (Map), cache get and set (CacheGet, CacheSet) and HTTP (HTTP) nodes.
// Other node kinds, such as the SQL nodes that call package pool, are just
// other implementations of Node: a node whose output implements RowCounter
// has its row count in the trace, one whose output implements Lookuper
// resolves paths without reflection, and one that implements Validator is
// checked by Build.
//
// A Builder (New) declares the workflow:
//
//	wf, err := workflow.New("orders").
//		Add("fetch", fetchOrders).
//		Add("process", process, workflow.WithRetry(retry)).
//		BindParam("fetch", "customer", "customer_id").
//		Connect("fetch", "rows.0.id", "process", "order_id").
//		Build()
//
// Connect binds an input of one node to a dotted path in another node's
// output: map keys, list indexes, Lookuper keys and struct fields (by JSON
// name). BindParam binds an input to a run parameter, which every node can
// also read with Inputs.Param. After orders nodes that share no data. Cycle
// declares a loop (see Cycle). Build reports every problem at once: unknown
// or duplicate nodes, inputs bound twice, loops that were not declared,
// declared cycles that close no loop, connections from a switch to a branch
// it does not have, bad options and node settings.
//
// # Lifecycle
//
// Build once, at start-up; run many times. A Workflow is immutable: Build
// pre-computes the execution order, each node's input bindings (as node
// indexes and split paths) and the dependency counts, so that a run only
// fills slices. Runtime.Execute returns a Run with each node's output, the
// run's ID and its Trace; the Runtime keeps the traces of its last
// TraceHistory runs for Runtime.Trace. Nothing needs closing: the Runtime
// owns no goroutine between runs, and a run's goroutines have all returned
// when Execute does.
//
// Node outcomes are ok, cached, fallback, failed, upstream_failed (a node it
// depends on failed), skipped (on a switch branch not taken, or depending on
// a skipped node) and canceled. A failed node fails only what depends on it;
// the run's error is a *RunError naming the nodes that failed by themselves.
//
// # Concurrency
//
// Nodes run as soon as what they depend on is done, up to
// RuntimeOptions.MaxConcurrency at once per run. The runtime does not start
// a goroutine per node: the goroutine that finishes a node goes on with the
// first dependant that became ready, and only further ready nodes go to
// other goroutines, so a chain of nodes runs on the caller's goroutine at a
// fraction of a microsecond per node (BenchmarkChainOfNoopNodes). Cancelling Execute's context stops nodes from
// starting and cancels the context of those running; nodes must honour
// their context, because Execute waits for them. A node's output goes to
// its dependants as is, possibly to several at once, so nobody may modify
// it; the Inputs a node receives are valid only during its call.
//
// A cycle's body runs as one unit: its nodes one after another, once per
// iteration, until Converged holds or MaxIterations is reached — which is
// an error (ErrNotConverged) unless AcceptUnconverged is set.
//
// # Shared resilience
//
// Retry, Breaker, RateLimiter, the caches (LocalCache, RedisCache) and the
// *http.Client from NewHTTPClient are long-lived objects created outside
// any workflow and attached to nodes with NodeOptions (WithRetry,
// WithBreaker, WithRateLimit, WithTimeout, WithFallback, WithCache) or
// passed to node constructors. Their state is shared by every node, run and
// workflow that uses the same object: a breaker opened by failures in one
// run refuses calls in the next, a rate limit counts calls across all runs,
// a cache hit may come from another run or, with Redis, another kproxy
// instance. Create one per dependency, not per run. All are safe for
// concurrent use. The order in which the options wrap a call is fixed; see
// NodeOption.
//
// # Traces
//
// A Trace records the run (ID, workflow, start, duration, outcome, error)
// and each node (kind, outcome, start, duration, attempts, rows, cycle
// iterations, map items, switch branch, error). It encodes as JSON with
// durations as fractional milliseconds in fields ending in _ms.
//
// # Hosted workflows
//
// Hosted builds the workflows declared in kproxy's configuration
// (config.Workflow, the workflows section) with the Builder: each node
// becomes a node of its kind, each reference an input — "params.X" a
// BindParam, "node.path" a Connect — and each declared loop a Cycle. The
// breakers, rate limiters and caches of workflow_resilience and
// workflow_cache are created once and shared by every workflow, and are
// kept by Reload while their settings do not change. Each workflow gets a
// Runtime of its own (its max_concurrency), and Hosted.Trace finds a run's
// trace in any of them. Hosted.Handler serves the workflows over HTTP:
// kproxy mounts it on its admin listener, and `kproxy workflow run` uses
// Hosted in-process.
//
// Where the SQL nodes run is the caller's choice, through
// HostedOptions.DB: kproxy serve passes pool.NewDB on the proxy's own
// cluster and classifier, so workflows share the pools, the routing and
// the server statements of network clients; `kproxy workflow run` passes
// pool.OpenDB, a cluster of its own (library mode).
//
// # What it does not do
//
// It does not persist runs or resume them after a restart, it does not
// distribute a run over several processes, and it does not stop a node that
// ignores its context. It does not reach Postgres itself: SQL nodes go
// through package pool. Cycles may not share nodes or nest, and a cycle's
// body does not run its own nodes in parallel. Hosted workflows cannot run
// Go code: their nodes are the kinds the configuration names (sql, http,
// cache, map, switch, merge).
package workflow
