package config

import "time"

// Workflow is a workflow kproxy hosts: declared in the file, built when
// kproxy starts, run by `kproxy workflow run` and by POST
// /workflows/{name}/runs on the admin listener.
//
// Values flow between nodes through references, dotted paths written as
// strings: "params.status" is the run parameter status, "fetch.rows.0.id"
// the path rows.0.id in node fetch's output, "route.big.order" the input
// order of switch route when it took branch big. Inside a map body, "item"
// is the current item and "index" its position; in a transaction step,
// "steps.N…" is an earlier step's result. A reference whose first segment
// is one of the node's own input names (see WorkflowNode.Inputs) reads that
// input.
type Workflow struct {
	// Name is the workflow's name in a workflow file (kproxy workflow run
	// FILE), where it is required. Under workflows the key is the name;
	// Name may then be left out, and must equal the key if given.
	Name string `yaml:"name"`
	// Database and User are what the SQL nodes connect as, named as a
	// client would name them (databases and users apply). Default
	// "postgres" for both.
	Database string `yaml:"database"`
	User     string `yaml:"user"`
	// MaxConcurrency bounds the nodes of one run that execute at once.
	// Default 0: 64.
	MaxConcurrency int `yaml:"max_concurrency"`
	// Timeout bounds a whole run; past it the run is cancelled. Default 0:
	// no limit (an HTTP run still ends when its client goes away).
	Timeout time.Duration `yaml:"timeout"`
	// Params are the run parameters every run must pass. Parameters that
	// references name are required anyway; when Params is given, every
	// params.X reference must name one of them.
	Params []string `yaml:"params"`
	// Nodes are the workflow's nodes, in any order.
	Nodes []WorkflowNode `yaml:"nodes"`
	// Cycles declare loops over the nodes.
	Cycles []WorkflowCycle `yaml:"cycles"`
}

// Node kinds.
const (
	KindSQL    = "sql"
	KindHTTP   = "http"
	KindCache  = "cache"
	KindMap    = "map"
	KindSwitch = "switch"
	KindMerge  = "merge"
)

// SQL node modes.
const (
	SQLModeQuery       = "query"
	SQLModeExec        = "exec"
	SQLModeTransaction = "transaction"
)

// Merge node modes.
const (
	MergeModeFirst  = "first"
	MergeModeMap    = "map"
	MergeModeList   = "list"
	MergeModeConcat = "concat"
)

// Cache stores and cache node operations.
const (
	CacheStoreLocal = "local"
	CacheStoreRedis = "redis"
	CacheOpGet      = "get"
	CacheOpSet      = "set"
)

// WorkflowNode is one node of a Workflow. Which keys apply depends on Kind;
// a key another kind uses is an error.
type WorkflowNode struct {
	// ID names the node; references use it. Letters, digits, "_" and "-";
	// params, item, index and steps are reserved.
	ID string `yaml:"id"`
	// Kind is sql, http, cache, map, switch or merge. Required.
	Kind string `yaml:"kind"`
	// Inputs binds input names to references, in the order written (a
	// merge takes its inputs in that order). The node's other references
	// may start with these names. An HTTP node reads the inputs url,
	// query, headers and body; a switch passes its inputs on along the
	// branch it takes.
	Inputs Bindings `yaml:"inputs"`
	// After names nodes this one waits for without taking their output.
	After []string `yaml:"after"`

	// SQL is the statement of a sql node in mode query or exec; its
	// arguments $1, $2, … are the references in Args.
	SQL  string   `yaml:"sql"`
	Args []string `yaml:"args"`
	// Mode is, for a sql node, query (rows are returned; the default),
	// exec (only the tag and row count) or transaction (Steps, in one
	// transaction on the primary); for a merge node, first (the first
	// input present: the default), map, list or concat.
	Mode string `yaml:"mode"`
	// ExpectRows, in mode query or exec, fails the node unless the
	// statement returns or affects exactly this many rows.
	ExpectRows *int64 `yaml:"expect_rows"`
	// Steps are the statements of a transaction.
	Steps []SQLStep `yaml:"steps"`

	// Method is an http node's method; default GET, or POST with a body.
	Method string `yaml:"method"`
	// URL is an http node's URL, unless an input url is bound.
	URL string `yaml:"url"`
	// Headers are sent with every request of an http node.
	Headers map[string]string `yaml:"headers"`
	// Body is, for an http node, a reference to the value sent as the JSON
	// body (the same as inputs: {body: …}); for a map node, the node run
	// once per item: a mapping of kind sql or http, without id.
	Body Body `yaml:"body"`

	// Op is a cache node's operation: get (outputs {hit, value}) or set
	// (stores Value, outputs it). Required for a cache node.
	Op string `yaml:"op"`
	// Store is the cache a cache node uses: local (default) or redis.
	Store string `yaml:"store"`
	// Key lists the references a cache node's key is made of. Required.
	Key []string `yaml:"key"`
	// Prefix starts a cache node's keys; default the workflow's name, so
	// that get and set nodes of one workflow share keys.
	Prefix string `yaml:"prefix"`
	// TTL is how long a cache node's set keeps the value; 0: until evicted.
	TTL time.Duration `yaml:"ttl"`
	// Value is the reference a cache set node stores.
	Value string `yaml:"value"`

	// Items is the reference to a map node's list of items. Required.
	Items string `yaml:"items"`
	// MaxWorkers is the items a map node processes at once; default 0: 10.
	MaxWorkers int `yaml:"max_workers"`
	// BatchSize splits a map's items into batches run one after another;
	// default 0: one batch.
	BatchSize int `yaml:"batch_size"`
	// TimeoutPerItem fails a map item that takes longer; default 0: none.
	TimeoutPerItem time.Duration `yaml:"timeout_per_item"`
	// ContinueOnError lets a map succeed when items fail; their errors are
	// in its output. Default false: the first failure fails the map.
	ContinueOnError bool `yaml:"continue_on_error"`

	// On is the reference a switch node routes on. Required.
	On string `yaml:"on"`
	// Cases maps a value of On (as text: 3 and "3" are one case) to the
	// branch taken.
	Cases map[string]string `yaml:"cases"`
	// Default is the branch for any other value; empty: such a value fails
	// the switch.
	Default string `yaml:"default"`

	// Retry retries the node's failed attempts.
	Retry *Retry `yaml:"retry"`
	// Timeout bounds the node's call, retries included. Default 0: none.
	Timeout time.Duration `yaml:"timeout"`
	// Fallback replaces the node's failure with a value.
	Fallback *Fallback `yaml:"fallback"`
	// Breaker names a circuit breaker of workflow_resilience.breakers.
	Breaker string `yaml:"breaker"`
	// RateLimit names a limiter of workflow_resilience.rate_limits.
	RateLimit string `yaml:"rate_limit"`
	// Cache keeps the node's output in a cache (cache-aside).
	Cache *NodeCache `yaml:"cache"`
}

// SQLStep is one statement of a sql node in mode transaction.
type SQLStep struct {
	// SQL is the statement. Required.
	SQL string `yaml:"sql"`
	// Args are references for $1, $2, …; "steps.N…" reads step N's result.
	Args []string `yaml:"args"`
	// ExpectRows rolls the transaction back unless the statement returns or
	// affects exactly this many rows.
	ExpectRows *int64 `yaml:"expect_rows"`
}

// Binding binds the input Name to the value Ref refers to.
type Binding struct {
	Name string
	Ref  string
}

// Bindings are input bindings, written in the file as a mapping from input
// name to reference and kept in the order written.
type Bindings []Binding

// Body is an http node's body reference (written as a string) or a map
// node's body node (written as a mapping). At most one is set.
type Body struct {
	Ref  string
	Node *WorkflowNode
}

// IsZero reports whether neither is set.
func (b Body) IsZero() bool { return b.Ref == "" && b.Node == nil }

// Retry configures retries of a node. Zero fields take the defaults.
type Retry struct {
	// MaxAttempts counts the first attempt too; default 3.
	MaxAttempts int `yaml:"max_attempts"`
	// InitialDelay is the wait after the first failure; default 100ms.
	InitialDelay time.Duration `yaml:"initial_delay"`
	// MaxDelay caps the wait between attempts; default 5s.
	MaxDelay time.Duration `yaml:"max_delay"`
	// Multiplier grows the wait after each failure; default 2.
	Multiplier float64 `yaml:"multiplier"`
	// Jitter randomises each wait by up to this fraction either way;
	// default 0: 0.5.
	Jitter float64 `yaml:"jitter"`
}

// Fallback is the value that replaces a failed node's output.
type Fallback struct {
	// Value is any YAML value; null is a fallback to null.
	Value any `yaml:"value"`
}

// NodeCache is cache-aside for one node: a hit is the node's output and
// the node does not run; after a miss its output is stored.
type NodeCache struct {
	// Store is local (default) or redis.
	Store string `yaml:"store"`
	// TTL is how long an output is kept; 0: until evicted.
	TTL time.Duration `yaml:"ttl"`
	// Key lists the references the key is made of; default every input of
	// the node (its arguments included).
	Key []string `yaml:"key"`
	// Prefix starts the keys. Default "workflow/node/" and a hash of the
	// node's settings, so that a node changed by a reload does not read
	// what its old version cached.
	Prefix string `yaml:"prefix"`
}

// WorkflowCycle declares a loop: after each iteration the value From
// refers to feeds the input Input of node To, and the nodes on the paths
// from To to From run again.
type WorkflowCycle struct {
	// Name names the cycle in traces and errors. Required.
	Name string `yaml:"name"`
	// From is the reference (node.path) whose value goes back. Required.
	From string `yaml:"from"`
	// To is the node that receives it: the loop's entry. Required.
	To string `yaml:"to"`
	// Input is the input of To it feeds; To's references may use it.
	// Required.
	Input string `yaml:"input"`
	// MaxIterations bounds the iterations. Required, at least 1.
	MaxIterations int `yaml:"max_iterations"`
	// Until is a reference into a loop node's output: the loop ends after
	// an iteration in which it resolves to a value other than null, false,
	// 0 or "". Without it the loop runs MaxIterations times.
	Until string `yaml:"until"`
	// AcceptUnconverged lets a loop with Until that reaches MaxIterations
	// succeed; by default that fails it.
	AcceptUnconverged bool `yaml:"accept_unconverged"`
}

// WorkflowResilience declares the circuit breakers and rate limiters that
// workflow nodes name. Each is created once, so its state (an open breaker,
// the tokens spent) holds across nodes, runs and workflows.
type WorkflowResilience struct {
	Breakers   map[string]Breaker   `yaml:"breakers"`
	RateLimits map[string]RateLimit `yaml:"rate_limits"`
}

// Breaker is a circuit breaker. Zero fields take the defaults.
type Breaker struct {
	// FailureThreshold consecutive failures open it; default 5.
	FailureThreshold int `yaml:"failure_threshold"`
	// RecoveryTimeout is how long it stays open; default 30s.
	RecoveryTimeout time.Duration `yaml:"recovery_timeout"`
	// HalfOpenProbes are the calls let through to test recovery; default 1.
	HalfOpenProbes int `yaml:"half_open_probes"`
}

// RateLimit is a token bucket.
type RateLimit struct {
	// PerSecond is the average calls a second. Required, positive.
	PerSecond float64 `yaml:"per_second"`
	// Burst is the calls allowed at once; default 0: 1.
	Burst int `yaml:"burst"`
}

// WorkflowCache configures the caches workflow nodes use.
type WorkflowCache struct {
	// LocalEntries bounds the in-process cache (store: local); the least
	// recently used entry goes first. Default 1024.
	LocalEntries int `yaml:"local_entries"`
	// RedisAddr (host:port) is the Redis of store: redis, shared with other
	// kproxy instances. Empty: store: redis is refused.
	RedisAddr string `yaml:"redis_addr"`
	// RedisPrefix starts every key in Redis. Default "kproxy:workflow:".
	RedisPrefix string `yaml:"redis_prefix"`
}

// DefaultWorkflowDatabase and DefaultWorkflowUser are what SQL nodes
// connect as when a workflow does not say.
const (
	DefaultWorkflowDatabase = "postgres"
	DefaultWorkflowUser     = "postgres"
)
