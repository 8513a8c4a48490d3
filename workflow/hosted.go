package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/pool"
)

// Errors of hosted workflows.
var (
	// ErrUnknownWorkflow is a run of a workflow the configuration does not
	// declare.
	ErrUnknownWorkflow = errors.New("unknown workflow")
	// ErrRunTimeout is the cause of a run cancelled because it reached its
	// workflow's timeout.
	ErrRunTimeout = errors.New("workflow run timed out")
	// ErrHostedClosed is a run asked for after Hosted.Close.
	ErrHostedClosed = errors.New("hosted workflows are closed")
)

// HostedOptions configures NewHosted. Zero fields take the defaults.
type HostedOptions struct {
	// DB returns the pool.DB that SQL nodes running as user on database
	// use; hosted mode passes pool.NewDB on kproxy's cluster, library mode
	// pool.OpenDB. It is called once per (database, user) pair, when the
	// first workflow with SQL nodes that uses the pair is built. The
	// returned DBs belong to the Hosted from then on: Close closes them.
	// Required when a workflow has SQL nodes.
	DB func(database, user string) (*pool.DB, error)
	// HTTPClient sends the HTTP nodes' requests. Default: a client from
	// NewHTTPClient(HTTPClientOptions{}), owned by the Hosted.
	HTTPClient *http.Client
	// TraceHistory is the runs per workflow whose traces Trace returns;
	// default 100.
	TraceHistory int
	// Logger receives failed runs, breaker changes and cache errors;
	// default none.
	Logger *zap.Logger
	// Clock stamps traces; default the system clock.
	Clock Clock
}

// Hosted runs the workflows declared in kproxy's configuration
// (config.Workflow): it builds each one once, with the breakers, rate
// limiters and caches of workflow_resilience and workflow_cache created
// once and shared by all of them, so their state holds across runs. It is
// what `kproxy workflow run` and the admin listener's /workflows routes
// use. It is safe for concurrent use.
//
// Each workflow has its own Runtime (its max_concurrency), whose last
// TraceHistory traces Trace finds by run ID. Reload swaps in the workflows
// of a new configuration while runs go on; Close releases the DBs, the
// Redis client and the HTTP client's idle connections.
type Hosted struct {
	o         HostedOptions
	log       *zap.Logger
	client    *http.Client
	ownClient bool

	mu      sync.Mutex
	dbs     map[[2]string]*pool.DB // guarded by mu; by (database, user)
	shared  *sharedObjects         // guarded by mu; those of the current set
	retired []*redis.Client        // guarded by mu; replaced by Reload, closed by Close
	closed  bool                   // guarded by mu

	set atomic.Pointer[hostedSet]
}

// hostedSet is one configuration's workflows; Reload replaces it whole.
type hostedSet struct {
	byName map[string]*hostedWorkflow
	names  []string // sorted
}

type hostedWorkflow struct {
	name           string
	wf             *Workflow
	rt             *Runtime
	timeout        time.Duration
	params         []string // required: declared and bound, sorted
	database, user string
}

// sharedObjects are the long-lived objects the workflows share, with the
// settings they were made from, so that Reload keeps those whose settings
// did not change.
type sharedObjects struct {
	breakers  map[string]sharedBreaker
	limiters  map[string]sharedLimiter
	local     *LocalCache
	localSize int
	redis     *redis.Client // nil without workflow_cache.redis_addr
	redisAddr string
	remote    *RedisCache
	runtimes  map[string]*Runtime // by workflow name
	maxConc   map[string]int      // the runtimes' max_concurrency
}

type sharedBreaker struct {
	cfg config.Breaker
	b   *Breaker
}

type sharedLimiter struct {
	cfg config.RateLimit
	l   *RateLimiter
}

// NewHosted builds every workflow of cfg.Workflows. It reports every
// problem of every workflow at once (each prefixed with its workflow's
// name), such as references to unknown nodes and loops that were not
// declared. cfg must have passed validation, which fills in the workflows'
// defaults.
func NewHosted(cfg *config.Config, o HostedOptions) (*Hosted, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	h := &Hosted{o: o, log: o.Logger, client: o.HTTPClient, dbs: map[[2]string]*pool.DB{}}
	if h.client == nil {
		h.client = NewHTTPClient(HTTPClientOptions{})
		h.ownClient = true
	}
	if err := h.Reload(cfg); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// Reload builds the workflows of cfg and, if all of them build, replaces
// the running ones; otherwise it reports every problem and changes
// nothing. Runs under way finish with the workflows they started with.
// Breakers, rate limiters, caches and a workflow's trace history are kept
// when their settings did not change.
func (h *Hosted) Reload(cfg *config.Config) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return ErrHostedClosed
	}
	sh := h.sharedFor(cfg)
	set := &hostedSet{byName: map[string]*hostedWorkflow{}}
	var errs []error
	for _, name := range sortedNames(cfg.Workflows) {
		w := cfg.Workflows[name]
		hw, err := h.compile(name, &w, sh)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		set.byName[name] = hw
		set.names = append(set.names, name)
	}
	if len(errs) > 0 {
		if sh.redis != nil && (h.shared == nil || sh.redis != h.shared.redis) {
			_ = sh.redis.Close()
		}
		return errors.Join(errs...)
	}
	if old := h.shared; old != nil && old.redis != nil && old.redis != sh.redis {
		// Runs under way may still use it.
		h.retired = append(h.retired, old.redis)
	}
	h.shared = sh
	h.set.Store(set)
	return nil
}

// sharedFor returns the shared objects for cfg, reusing the current ones
// whose settings are unchanged.
func (h *Hosted) sharedFor(cfg *config.Config) *sharedObjects {
	old := h.shared
	if old == nil {
		old = &sharedObjects{}
	}
	sh := &sharedObjects{
		breakers: map[string]sharedBreaker{},
		limiters: map[string]sharedLimiter{},
		runtimes: map[string]*Runtime{},
		maxConc:  map[string]int{},
	}
	for name, bc := range cfg.WorkflowResilience.Breakers {
		if prev, ok := old.breakers[name]; ok && prev.cfg == bc {
			sh.breakers[name] = prev
			continue
		}
		sh.breakers[name] = sharedBreaker{cfg: bc, b: NewBreaker(BreakerOptions{
			Name:             name,
			FailureThreshold: bc.FailureThreshold,
			RecoveryTimeout:  bc.RecoveryTimeout,
			HalfOpenProbes:   bc.HalfOpenProbes,
			Logger:           h.log,
		})}
	}
	for name, lc := range cfg.WorkflowResilience.RateLimits {
		if prev, ok := old.limiters[name]; ok && prev.cfg == lc {
			sh.limiters[name] = prev
			continue
		}
		sh.limiters[name] = sharedLimiter{cfg: lc, l: NewRateLimiter(lc.PerSecond, lc.Burst)}
	}
	sh.localSize = cfg.WorkflowCache.LocalEntries
	if old.local != nil && old.localSize == sh.localSize {
		sh.local = old.local
	} else {
		sh.local = NewLocalCache(LocalCacheOptions{Size: sh.localSize, Clock: h.o.Clock})
	}
	if addr := cfg.WorkflowCache.RedisAddr; addr != "" {
		sh.redisAddr = addr
		if old.redis != nil && old.redisAddr == addr {
			sh.redis = old.redis
		} else {
			sh.redis = redis.NewClient(&redis.Options{Addr: addr})
		}
		sh.remote = NewRedisCache(sh.redis, cfg.WorkflowCache.RedisPrefix)
	}
	for name, w := range cfg.Workflows {
		if rt, ok := old.runtimes[name]; ok && old.maxConc[name] == w.MaxConcurrency {
			sh.runtimes[name] = rt
		} else {
			sh.runtimes[name] = NewRuntime(RuntimeOptions{
				MaxConcurrency: w.MaxConcurrency,
				TraceHistory:   h.o.TraceHistory,
				Logger:         h.log,
				Clock:          h.o.Clock,
			})
		}
		sh.maxConc[name] = w.MaxConcurrency
	}
	return sh
}

// dbLocked returns the DB of database and user, asking HostedOptions.DB the
// first time. h.mu is held.
func (h *Hosted) dbLocked(database, user string) (*pool.DB, error) {
	k := [2]string{database, user}
	if db, ok := h.dbs[k]; ok {
		return db, nil
	}
	if h.o.DB == nil {
		return nil, errors.New("SQL nodes need a database, and HostedOptions.DB is nil")
	}
	db, err := h.o.DB(database, user)
	if err != nil {
		return nil, fmt.Errorf("database %s as user %s: %w", database, user, err)
	}
	h.dbs[k] = db
	return db, nil
}

// Names returns the workflows' names, sorted; none after Close.
func (h *Hosted) Names() []string {
	if set := h.set.Load(); set != nil {
		return slices.Clone(set.names)
	}
	return nil
}

// HostedInfo describes a hosted workflow.
type HostedInfo struct {
	Name     string   `json:"name"`
	Database string   `json:"database"`
	User     string   `json:"user"`
	Params   []string `json:"params"` // the parameters a run must pass, sorted
	Nodes    []string `json:"nodes"`  // node IDs in execution order
	// TimeoutMS is the run timeout in milliseconds; 0: none.
	TimeoutMS float64 `json:"timeout_ms"`
}

// Info describes the workflow name, and reports whether there is one.
func (h *Hosted) Info(name string) (HostedInfo, bool) {
	set := h.set.Load()
	if set == nil {
		return HostedInfo{}, false
	}
	hw, ok := set.byName[name]
	if !ok {
		return HostedInfo{}, false
	}
	return HostedInfo{
		Name: hw.name, Database: hw.database, User: hw.user, Params: slices.Clone(hw.params),
		Nodes: hw.wf.Nodes(), TimeoutMS: ms(hw.timeout),
	}, true
}

// Run runs workflow name with params and returns as Runtime.Execute does.
// Before anything runs it fails with ErrUnknownWorkflow, or with
// ErrMissingParam for each required parameter that params lacks (the
// workflow's declared params and those its references name). The run is
// cancelled with the cause ErrRunTimeout when it reaches the workflow's
// timeout, and when ctx ends. params must not be modified until Run
// returns.
func (h *Hosted) Run(ctx context.Context, name string, params map[string]any) (*Run, error) {
	set := h.set.Load()
	if set == nil {
		return nil, ErrHostedClosed
	}
	hw, ok := set.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownWorkflow, name)
	}
	var missing []error
	for _, p := range hw.params {
		if _, ok := params[p]; !ok {
			missing = append(missing, fmt.Errorf("workflow %s: %w %q", name, ErrMissingParam, p))
		}
	}
	if len(missing) > 0 {
		return nil, errors.Join(missing...)
	}
	if hw.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, hw.timeout, fmt.Errorf("%w after %v", ErrRunTimeout, hw.timeout))
		defer cancel()
	}
	return hw.rt.Execute(ctx, hw.wf, params)
}

// Trace returns the trace of run id while its workflow's runtime keeps it.
func (h *Hosted) Trace(id string) (*Trace, bool) {
	set := h.set.Load()
	if set == nil {
		return nil, false
	}
	for _, hw := range set.byName {
		if t, ok := hw.rt.Trace(id); ok {
			return t, true
		}
	}
	return nil, false
}

// Close closes the DBs HostedOptions.DB returned (in library mode, their
// clusters too), the Redis client and, when the Hosted made it, the HTTP
// client's idle connections. Runs under way should have finished. Close is
// idempotent and always returns nil.
func (h *Hosted) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	h.set.Store(nil)
	for _, db := range h.dbs {
		_ = db.Close()
	}
	if h.shared != nil && h.shared.redis != nil {
		_ = h.shared.redis.Close()
	}
	for _, c := range h.retired {
		_ = c.Close()
	}
	if h.ownClient {
		h.client.CloseIdleConnections()
	}
	return nil
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// compile builds one workflow. h.mu is held.
func (h *Hosted) compile(name string, w *config.Workflow, sh *sharedObjects) (*hostedWorkflow, error) {
	c := &wfCompiler{h: h, sh: sh, w: w, name: name, b: New(name)}
	c.cycleInputs = map[string][]string{}
	for _, cy := range w.Cycles {
		c.cycleInputs[cy.To] = append(c.cycleInputs[cy.To], cy.Input)
	}
	for i := range w.Nodes {
		c.node(&w.Nodes[i])
	}
	for _, cy := range w.Cycles {
		c.cycle(cy)
	}
	if len(c.errs) > 0 {
		return nil, fmt.Errorf("workflow %q: %w", name, errors.Join(c.errs...))
	}
	wf, err := c.b.Build()
	if err != nil {
		return nil, err
	}
	params := append(slices.Clone(w.Params), wf.Params()...)
	slices.Sort(params)
	return &hostedWorkflow{
		name: name, wf: wf, rt: sh.runtimes[name], timeout: w.Timeout,
		params: slices.Compact(params), database: w.Database, user: w.User,
	}, nil
}

// wfCompiler turns a config.Workflow into Builder calls.
//
// A reference becomes an input: "params.X.path" a BindParam of "X.path",
// "node.path" a Connect from node's output path. Inputs declared in the
// node's inputs (and the inputs that cycles feed) get their own names; a
// reference used inside the node (a SQL argument, a cache key, a switch's
// on) gets an input named after it with ":" for ".", so that the node
// reads it whole. References that start with one of the node's own input
// names stay as they are: the node resolves them against its inputs.
type wfCompiler struct {
	h           *Hosted
	sh          *sharedObjects
	w           *config.Workflow
	name        string
	b           *Builder
	cycleInputs map[string][]string
	db          *pool.DB
	dbErr       error
	errs        []error
}

func (c *wfCompiler) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// resolver rewrites a reference for use inside a node.
type resolver interface {
	use(ref string) string
}

// graphScope binds a graph node's inputs on the Builder.
type graphScope struct {
	b    *Builder
	node string
	refs map[string]string // reference → input bound to it
}

// bind binds input name of the node to ref, resolved outside the node.
func (s *graphScope) bind(name, ref string) {
	root, rest, _ := strings.Cut(ref, ".")
	if root == "params" {
		s.b.BindParam(s.node, name, rest)
		return
	}
	s.b.Connect(root, rest, s.node, name)
}

func (s *graphScope) use(ref string) string {
	if name, ok := s.refs[ref]; ok {
		return name
	}
	name := strings.ReplaceAll(ref, ".", ":")
	s.refs[ref] = name
	s.bind(name, ref)
	return name
}

// innerScope resolves references that start with a local name inside the
// node, and hands the rest to outer.
type innerScope struct {
	local map[string]bool
	outer resolver
}

func (s innerScope) use(ref string) string {
	root, _, _ := strings.Cut(ref, ".")
	if s.local[root] {
		return ref
	}
	return s.outer.use(ref)
}

func (s innerScope) all(refs []string) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = s.use(r)
	}
	return out
}

func (c *wfCompiler) node(n *config.WorkflowNode) {
	g := &graphScope{b: c.b, node: n.ID, refs: map[string]string{}}
	in := innerScope{local: map[string]bool{}, outer: g}
	for _, b := range n.Inputs {
		g.bind(b.Name, b.Ref)
		in.local[b.Name] = true
	}
	for _, name := range c.cycleInputs[n.ID] {
		in.local[name] = true
	}
	var node Node
	switch n.Kind {
	case config.KindSQL:
		node = c.sqlNode(n, in)
	case config.KindHTTP:
		if n.Body.Ref != "" {
			g.bind("body", n.Body.Ref)
		}
		node = c.httpNode(n)
	case config.KindCache:
		node = c.cacheNode(n, in, g)
	case config.KindMap:
		node = c.mapNode(n, in, g)
	case config.KindSwitch:
		node = c.switchNode(n, in)
	case config.KindMerge:
		node = c.mergeNode(n)
	default:
		c.fail("node %s: unknown kind %q", n.ID, n.Kind)
		return
	}
	if node == nil {
		return
	}
	c.b.Add(n.ID, node, c.options(n, in)...)
	c.b.After(n.ID, n.After...)
}

func (c *wfCompiler) cycle(cy config.WorkflowCycle) {
	from, output, _ := strings.Cut(cy.From, ".")
	var converged func(int, map[string]any) bool
	if until := cy.Until; until != "" {
		converged = func(_ int, outputs map[string]any) bool {
			v, err := Lookup(outputs, until)
			return err == nil && truthy(v)
		}
	}
	c.b.Cycle(cy.Name, Cycle{
		From: from, Output: output, To: cy.To, Input: cy.Input,
		MaxIterations: cy.MaxIterations, Converged: converged, AcceptUnconverged: cy.AcceptUnconverged,
	})
}

// truthy is false for nil, false, zero numbers and empty strings.
func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case string:
		return x != ""
	case int:
		return x != 0
	case int64:
		return x != 0
	case float64:
		return x != 0
	case json.Number:
		return x.String() != "0"
	}
	return true
}

func (c *wfCompiler) database() *pool.DB {
	if c.db == nil && c.dbErr == nil {
		c.db, c.dbErr = c.h.dbLocked(c.w.Database, c.w.User)
		if c.dbErr != nil {
			c.fail("%w", c.dbErr) // once, however many SQL nodes there are
		}
	}
	return c.db
}

func (c *wfCompiler) sqlNode(n *config.WorkflowNode, in resolver) Node {
	db := c.database()
	if db == nil {
		return nil
	}
	switch n.Mode {
	case config.SQLModeQuery, "":
		return &sqlNode{db: db, kind: "sql_query", steps: []SQLStep{{SQL: n.SQL, Args: uses(in, n.Args), ExpectRows: n.ExpectRows}}}
	case config.SQLModeExec:
		return &sqlNode{db: db, kind: "sql_exec", exec: true, steps: []SQLStep{{SQL: n.SQL, Args: uses(in, n.Args), ExpectRows: n.ExpectRows}}}
	case config.SQLModeTransaction:
		// "steps.N…" reads the transaction's own earlier steps.
		tx := innerScope{local: map[string]bool{"steps": true}, outer: in}
		steps := make([]SQLStep, len(n.Steps))
		for i, s := range n.Steps {
			steps[i] = SQLStep{SQL: s.SQL, Args: tx.all(s.Args), ExpectRows: s.ExpectRows}
		}
		return &sqlNode{db: db, kind: "sql_tx", tx: true, steps: steps}
	}
	c.fail("node %s: unknown SQL mode %q", n.ID, n.Mode)
	return nil
}

func uses(in resolver, refs []string) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = in.use(r)
	}
	return out
}

func (c *wfCompiler) httpNode(n *config.WorkflowNode) Node {
	var header http.Header
	if len(n.Headers) > 0 {
		header = http.Header{}
		for k, v := range n.Headers {
			header.Set(k, v)
		}
	}
	return HTTP(HTTPRequest{Client: c.h.client, Method: n.Method, URL: n.URL, Header: header})
}

func (c *wfCompiler) cache(node, store string) Cache {
	if store == config.CacheStoreRedis {
		if c.sh.remote == nil {
			c.fail("node %s: store redis needs workflow_cache.redis_addr", node)
			return nil
		}
		return c.sh.remote
	}
	return c.sh.local
}

func (c *wfCompiler) cacheNode(n *config.WorkflowNode, in resolver, g *graphScope) Node {
	cache := c.cache(n.ID, n.Store)
	if cache == nil {
		return nil
	}
	prefix := n.Prefix
	if prefix == "" {
		prefix = c.name
	}
	key := keyFromRefs(prefix, uses(in, n.Key))
	if n.Op == config.CacheOpSet {
		g.bind("value", n.Value)
		return CacheSet(cache, key, n.TTL)
	}
	return CacheGet(cache, key)
}

// specHash fingerprints a node's settings, so that after a reload that
// changes the node its cache-aside keys change too, and it does not read
// what its old version stored. Instances with the same settings agree.
func specHash(n *config.WorkflowNode) string {
	b, _ := json.Marshal(n) // plain data: validation kept it encodable
	h := fnv.New64a()
	h.Write(b)
	return fmt.Sprintf("%016x", h.Sum64())
}

// keyFromRefs is a KeyFunc: prefix, ":" and the JSON array of the values
// refs resolve to among the inputs.
func keyFromRefs(prefix string, refs []string) KeyFunc {
	return func(in Inputs) (string, error) {
		vals := make([]any, len(refs))
		for i, r := range refs {
			v, err := Lookup(argEnv{in: in}, r)
			if err != nil {
				return "", fmt.Errorf("cache key: %w", err)
			}
			vals[i] = v
		}
		b, err := json.Marshal(vals)
		if err != nil {
			return "", fmt.Errorf("cache key: %w", err)
		}
		return prefix + ":" + string(b), nil
	}
}

// keyFromAllInputs is a KeyFunc: prefix, ":" and the JSON object of the
// node's inputs.
func keyFromAllInputs(prefix string) KeyFunc {
	return func(in Inputs) (string, error) {
		b, err := json.Marshal(in.Map())
		if err != nil {
			return "", fmt.Errorf("cache key: %w", err)
		}
		return prefix + ":" + string(b), nil
	}
}

func (c *wfCompiler) mapNode(n *config.WorkflowNode, in innerScope, g *graphScope) Node {
	g.bind("items", n.Items)
	if n.Body.Node == nil {
		c.fail("node %s: a map needs a body", n.ID)
		return nil
	}
	bn := n.Body.Node
	// The body's bindings see the item, its index and the map's inputs;
	// what else they name becomes an input of the map, which passes it on.
	outer := innerScope{local: map[string]bool{"item": true, "index": true}, outer: in}
	for name := range in.local {
		outer.local[name] = true
	}
	body := &boundBody{kind: bn.Kind}
	inner := innerScope{local: maps.Clone(outer.local), outer: outer}
	for _, b := range bn.Inputs {
		body.names = append(body.names, b.Name)
		body.refs = append(body.refs, outer.use(b.Ref))
		inner.local[b.Name] = true
	}
	switch bn.Kind {
	case config.KindSQL:
		body.node = c.sqlNode(bn, inner)
	case config.KindHTTP:
		if bn.Body.Ref != "" {
			body.names = append(body.names, "body")
			body.refs = append(body.refs, outer.use(bn.Body.Ref))
		}
		body.node = c.httpNode(bn)
	default:
		c.fail("node %s: a map body is a sql or http node, not %q", n.ID, bn.Kind)
	}
	if body.node == nil {
		return nil
	}
	if bn.Retry != nil {
		body.retry = newRetry(bn.Retry)
	}
	if bn.Breaker != "" {
		body.breaker = c.breaker(n.ID+" body", bn.Breaker)
	}
	if bn.RateLimit != "" {
		body.limiter = c.limiter(n.ID+" body", bn.RateLimit)
	}
	if bn.Fallback != nil {
		body.fallback = FallbackValue(bn.Fallback.Value)
	}
	return Map(body, MapOptions{
		Items:           "items",
		MaxWorkers:      n.MaxWorkers,
		BatchSize:       n.BatchSize,
		TimeoutPerItem:  n.TimeoutPerItem,
		ContinueOnError: n.ContinueOnError,
	})
}

func (c *wfCompiler) switchNode(n *config.WorkflowNode, in innerScope) Node {
	s := &onSwitch{on: in.use(n.On), cases: n.Cases, otherwise: n.Default}
	for _, b := range n.Cases {
		if !slices.Contains(s.branches, b) {
			s.branches = append(s.branches, b)
		}
	}
	if n.Default != "" && !slices.Contains(s.branches, n.Default) {
		s.branches = append(s.branches, n.Default)
	}
	slices.Sort(s.branches)
	for _, b := range n.Inputs {
		s.keep = append(s.keep, b.Name)
	}
	return s
}

func (c *wfCompiler) mergeNode(n *config.WorkflowNode) Node {
	mode := map[string]MergeMode{
		config.MergeModeFirst: MergeFirst, "": MergeFirst, config.MergeModeMap: MergeMap,
		config.MergeModeList: MergeList, config.MergeModeConcat: MergeConcat,
	}
	m, ok := mode[n.Mode]
	if !ok {
		c.fail("node %s: unknown merge mode %q", n.ID, n.Mode)
		return nil
	}
	return Merge(m)
}

func (c *wfCompiler) breaker(node, name string) *Breaker {
	b, ok := c.sh.breakers[name]
	if !ok {
		c.fail("node %s: unknown breaker %q", node, name)
		return nil
	}
	return b.b
}

func (c *wfCompiler) limiter(node, name string) *RateLimiter {
	l, ok := c.sh.limiters[name]
	if !ok {
		c.fail("node %s: unknown rate limit %q", node, name)
		return nil
	}
	return l.l
}

func newRetry(r *config.Retry) *Retry {
	return NewRetry(RetryOptions{
		MaxAttempts: r.MaxAttempts, InitialDelay: r.InitialDelay, MaxDelay: r.MaxDelay,
		Multiplier: r.Multiplier, Jitter: r.Jitter,
	})
}

// options turns a node's resilience settings into NodeOptions.
func (c *wfCompiler) options(n *config.WorkflowNode, in innerScope) []NodeOption {
	var opts []NodeOption
	if n.Retry != nil {
		opts = append(opts, WithRetry(newRetry(n.Retry)))
	}
	if n.Timeout > 0 {
		opts = append(opts, WithTimeout(n.Timeout, Fallback{}))
	}
	if n.Fallback != nil {
		opts = append(opts, WithFallback(FallbackValue(n.Fallback.Value)))
	}
	if n.Breaker != "" {
		if b := c.breaker(n.ID, n.Breaker); b != nil {
			opts = append(opts, WithBreaker(b))
		}
	}
	if n.RateLimit != "" {
		if l := c.limiter(n.ID, n.RateLimit); l != nil {
			opts = append(opts, WithRateLimit(l))
		}
	}
	if nc := n.Cache; nc != nil {
		if cache := c.cache(n.ID, nc.Store); cache != nil {
			prefix := nc.Prefix
			if prefix == "" {
				prefix = c.name + "/" + n.ID + "/" + specHash(n)
			}
			key := keyFromAllInputs(prefix)
			if len(nc.Key) > 0 {
				key = keyFromRefs(prefix, in.all(nc.Key))
			}
			opts = append(opts, WithCache(cache, key, nc.TTL))
		}
	}
	return opts
}

// boundBody is a map body with inputs of its own, resolved against the
// item's inputs, and its retries, breaker, rate limit and fallback.
type boundBody struct {
	node     Node
	kind     string
	names    []string // the body's own inputs
	refs     []string // what each reads among the item's inputs
	retry    *Retry
	breaker  *Breaker
	limiter  *RateLimiter
	fallback Fallback
}

func (b *boundBody) Kind() string {
	if k, ok := b.node.(Kinder); ok {
		return k.Kind()
	}
	return b.kind
}

func (b *boundBody) Validate() error {
	if v, ok := b.node.(Validator); ok {
		return v.Validate()
	}
	return nil
}

func (b *boundBody) Run(ctx context.Context, in Inputs) (any, error) {
	if len(b.names) > 0 {
		names := make([]string, 0, len(in.names)+len(b.names))
		values := make([]any, 0, len(in.names)+len(b.names))
		names = append(append(names, in.names...), b.names...)
		values = append(values, in.values...)
		for i, ref := range b.refs {
			v, err := Lookup(argEnv{in: in}, ref)
			if err != nil {
				return nil, Permanent(fmt.Errorf("input %q: %w", b.names[i], err))
			}
			values = append(values, v)
		}
		in = Inputs{names: names, values: values, node: in.node, run: in.run}
	}
	attempt := func() (any, error) {
		if b.limiter != nil {
			if err := b.limiter.wait(ctx); err != nil {
				return nil, err
			}
		}
		if b.breaker != nil {
			return b.breaker.do(func() (any, error) { return safeRun(ctx, b.node, in) })
		}
		return safeRun(ctx, b.node, in)
	}
	var (
		out any
		err error
	)
	if b.retry != nil {
		out, err = b.retry.do(ctx, attempt)
	} else {
		out, err = attempt()
	}
	if err != nil && b.fallback.set && ctx.Err() == nil {
		return b.fallback.value, nil
	}
	return out, err
}

// onSwitch routes on the value a reference resolves to among its inputs.
// Its branch carries that value as "on" and the inputs named in keep.
type onSwitch struct {
	on        string
	cases     map[string]string
	otherwise string
	branches  []string
	keep      []string
}

func (s *onSwitch) Kind() string          { return "switch" }
func (s *onSwitch) branchNames() []string { return s.branches }

func (s *onSwitch) Validate() error {
	if len(s.branches) == 0 {
		return errors.New("switch: no branches")
	}
	return nil
}

func (s *onSwitch) Run(_ context.Context, in Inputs) (any, error) {
	v, err := Lookup(argEnv{in: in}, s.on)
	if err != nil && !errors.Is(err, ErrPath) {
		return nil, err
	}
	// A value that is not there routes as null.
	text := "null"
	if v != nil {
		text = fmt.Sprint(v)
	}
	b, ok := s.cases[text]
	if !ok {
		if s.otherwise == "" {
			return nil, fmt.Errorf("switch: no case for %q", text)
		}
		b = s.otherwise
	}
	value := map[string]any{"on": v}
	for _, name := range s.keep {
		if x, ok := in.Get(name); ok {
			value[name] = x
		}
	}
	return Branch{Name: b, Value: value}, nil
}
