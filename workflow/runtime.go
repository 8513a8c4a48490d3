package workflow

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Clock tells the time. Tests inject a fake one.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// RuntimeOptions configures a Runtime. Zero fields take the defaults.
type RuntimeOptions struct {
	// MaxConcurrency bounds the nodes of one run that execute at once; a
	// cycle's body counts as one. Default 64.
	MaxConcurrency int
	// TraceHistory is the number of runs whose traces Trace and Traces
	// return; default 100, negative for none.
	TraceHistory int
	// Logger receives run failures (warn) and cache errors (warn), and, at
	// debug level, every run. Default none.
	Logger *zap.Logger
	// Clock stamps the traces and timestamps run IDs; default the system
	// clock.
	Clock Clock
	// Rand supplies run IDs' random bits; default crypto/rand.
	Rand io.Reader
}

// Runtime executes workflows. One Runtime serves any number of workflows
// and concurrent runs; it is safe for concurrent use and owns no
// goroutines between runs, so it needs no Close.
type Runtime struct {
	maxConcurrency int
	log            *zap.Logger
	clock          Clock
	rand           io.Reader
	history        *traceHistory
}

// NewRuntime returns a Runtime with o's settings.
func NewRuntime(o RuntimeOptions) *Runtime {
	if o.MaxConcurrency <= 0 {
		o.MaxConcurrency = 64
	}
	if o.TraceHistory == 0 {
		o.TraceHistory = 100
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	return &Runtime{
		maxConcurrency: o.MaxConcurrency,
		log:            o.Logger,
		clock:          o.Clock,
		rand:           o.Rand,
		history:        newTraceHistory(max(o.TraceHistory, 0)),
	}
}

// Trace returns the trace of run id while it is among the last
// TraceHistory runs.
func (rt *Runtime) Trace(id string) (*Trace, bool) { return rt.history.get(id) }

// Traces returns the kept traces, newest first.
func (rt *Runtime) Traces() []*Trace { return rt.history.recent() }

// Run is the result of one execution of a workflow. It is immutable.
type Run struct {
	// ID identifies the run: 32 hex digits, time-ordered (a millisecond
	// timestamp, then random bits).
	ID    string
	Trace *Trace

	wf      *Workflow
	results []any
	states  []state
}

// Result returns the output of node id, and whether it produced one (it
// ran and succeeded, was cached or fell back, or ran in a cycle that did
// not converge).
func (r *Run) Result(id string) (any, bool) {
	i, ok := r.wf.byID[id]
	if !ok || !r.states[i].produced() {
		return nil, false
	}
	return r.results[i], true
}

// Results returns the outputs of the nodes that produced one, by node ID.
func (r *Run) Results() map[string]any {
	m := make(map[string]any, len(r.results))
	for i := range r.wf.nodes {
		if r.states[i].produced() {
			m[r.wf.nodes[i].id] = r.results[i]
		}
	}
	return m
}

// Lookup resolves a dotted path in node id's output.
func (r *Run) Lookup(id, path string) (any, error) {
	v, ok := r.Result(id)
	if !ok {
		return nil, fmt.Errorf("node %s: no output", id)
	}
	return Lookup(v, path)
}

// state is a node's progress in a run.
type state uint8

const (
	statePending state = iota
	stateOK
	stateCached
	stateFallback
	stateUnconverged // ran in a cycle that did not converge: has an output, counts as failed
	stateFailed
	stateUpstreamFailed
	stateSkipped
	stateCanceled
)

func (s state) produced() bool {
	return s == stateOK || s == stateCached || s == stateFallback || s == stateUnconverged
}

func (s state) failed() bool {
	return s == stateFailed || s == stateUpstreamFailed || s == stateUnconverged || s == stateCanceled
}

func (s state) outcome() Outcome {
	switch s {
	case stateOK:
		return OutcomeOK
	case stateCached:
		return OutcomeCached
	case stateFallback:
		return OutcomeFallback
	case stateFailed, stateUnconverged:
		return OutcomeFailed
	case stateUpstreamFailed:
		return OutcomeUpstreamFailed
	case stateSkipped:
		return OutcomeSkipped
	case stateCanceled:
		return OutcomeCanceled
	}
	return ""
}

// Execute runs wf with params and returns when every node has finished,
// failed, been skipped or been cancelled.
//
// Nodes run as soon as what they depend on has finished, up to
// MaxConcurrency at once. A node that fails fails the nodes that depend on
// it (upstream_failed) and nothing else. Cancelling ctx stops nodes from
// starting and cancels the context of those running; Execute still waits
// for them to return.
//
// The returned Run is non-nil once the run has started, even when it
// failed: it holds the outputs of the nodes that succeeded and the trace.
// The error is then a *RunError naming the failed nodes. Before starting,
// Execute fails with ErrMissingParam (every missing parameter, joined) and
// returns no Run. params must not be modified until Execute returns.
func (rt *Runtime) Execute(ctx context.Context, wf *Workflow, params map[string]any) (*Run, error) {
	if wf == nil {
		return nil, fmt.Errorf("%w: nil workflow", ErrInvalidWorkflow)
	}
	var missing []error
	for _, p := range wf.params {
		if _, ok := params[p]; !ok {
			missing = append(missing, fmt.Errorf("workflow %s: %w %q", wf.name, ErrMissingParam, p))
		}
	}
	if len(missing) > 0 {
		return nil, errors.Join(missing...)
	}

	start := rt.clock.Now()
	id, err := rt.runID(start)
	if err != nil {
		return nil, err
	}
	r := newExec(ctx, rt, wf, params, id)
	r.start()

	trace := &Trace{
		RunID:    r.info.id,
		Workflow: wf.name,
		Start:    start,
		Duration: rt.clock.Now().Sub(start),
		Outcome:  OutcomeOK,
		Nodes:    r.nodes,
		Cycles:   r.cycles,
	}
	var errs []error
	canceled := false
	for i := range wf.nodes {
		switch r.states[i] {
		case stateFailed:
			errs = append(errs, &NodeError{Node: wf.nodes[i].id, Err: r.errs[i]})
		case stateCanceled:
			canceled = true
		}
	}
	for _, ce := range r.cycleErrs {
		if ce != nil {
			errs = append(errs, ce)
		}
	}
	if canceled {
		errs = append(errs, context.Cause(ctx))
	}
	run := &Run{ID: r.info.id, Trace: trace, wf: wf, results: r.results, states: r.states}
	if len(errs) > 0 {
		err = &RunError{Workflow: wf.name, RunID: r.info.id, Errs: errs}
		trace.Error = err.Error()
		trace.Outcome = OutcomeFailed
		if canceled {
			trace.Outcome = OutcomeCanceled
		}
		rt.log.Warn("workflow run failed", zap.String("workflow", wf.name), zap.String("run_id", r.info.id),
			zap.Duration("duration", trace.Duration), zap.Error(err))
	} else if ce := rt.log.Check(zap.DebugLevel, "workflow run finished"); ce != nil {
		ce.Write(zap.String("workflow", wf.name), zap.String("run_id", r.info.id), zap.Duration("duration", trace.Duration))
	}
	rt.history.add(trace)
	return run, err
}

// runID returns 32 hex digits: the time in milliseconds (48 bits) and 80
// random bits, so IDs sort by start time and do not collide.
func (rt *Runtime) runID(now time.Time) (string, error) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := io.ReadFull(rt.rand, b[6:]); err != nil {
		return "", fmt.Errorf("workflow: run ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// exec is one run in progress.
//
// Scheduling: a driver runs a unit, then decrements the pending count of
// each unit that depends on it; it goes on itself with the first that
// becomes ready and hands the others to new drivers, or queues them when
// MaxConcurrency drivers are running. A chain of nodes therefore runs on one
// goroutine (the caller's) without any handoff. A node's state, result and
// trace entry are written by the driver that runs it before the atomic
// decrement that releases its dependants, which read them after theirs.
type exec struct {
	rt    *Runtime
	wf    *Workflow
	ctx   context.Context
	done  <-chan struct{}
	info  runInfo
	clock Clock
	limit int

	results   []any
	states    []state
	errs      []error
	nodes     []NodeTrace
	cycles    []CycleTrace
	cycleErrs []error // per cycle: why it failed as a whole, or nil
	pending   []atomic.Int32
	buf       []any // inputs of all nodes, each node's at its spec's off

	mu     sync.Mutex
	active int     // guarded by mu; drivers running
	queue  []int32 // guarded by mu; ready units waiting for a driver
	wg     sync.WaitGroup
}

func newExec(ctx context.Context, rt *Runtime, wf *Workflow, params map[string]any, id string) *exec {
	n := len(wf.nodes)
	r := &exec{
		rt:      rt,
		wf:      wf,
		ctx:     ctx,
		done:    ctx.Done(),
		info:    runInfo{id: id, params: params},
		clock:   rt.clock,
		limit:   rt.maxConcurrency,
		results: make([]any, n),
		states:  make([]state, n),
		errs:    make([]error, n),
		nodes:   make([]NodeTrace, n),
		pending: make([]atomic.Int32, len(wf.units)),
		buf:     make([]any, wf.bufLen),
	}
	for i := range wf.nodes {
		r.nodes[i].Node = wf.nodes[i].id
		r.nodes[i].Kind = wf.nodes[i].kind
	}
	for u := range wf.units {
		r.pending[u].Store(wf.units[u].deps)
	}
	if len(wf.cycles) > 0 {
		r.cycles = make([]CycleTrace, len(wf.cycles))
		r.cycleErrs = make([]error, len(wf.cycles))
		for i := range wf.cycles {
			r.cycles[i].Name = wf.cycles[i].name
		}
	}
	return r
}

// start runs the workflow to the end on the calling goroutine and as many
// others as it needs, and waits for all of them.
func (r *exec) start() {
	roots := r.wf.roots
	r.active = 1
	for _, u := range roots[1:] {
		r.handOff(u)
	}
	r.drive(roots[0])
	r.wg.Wait()
}

// drive runs unit u and then whatever becomes ready, until nothing is left
// for this driver.
func (r *exec) drive(u int32) {
	for {
		r.runUnit(u)
		next := int32(-1)
		for _, d := range r.wf.units[u].next {
			if r.pending[d].Add(-1) == 0 {
				if next < 0 {
					next = d
				} else {
					r.handOff(d)
				}
			}
		}
		if next >= 0 {
			u = next
			continue
		}
		r.mu.Lock()
		if len(r.queue) > 0 {
			u = r.queue[0]
			r.queue = r.queue[1:]
			r.mu.Unlock()
			continue
		}
		r.active--
		r.mu.Unlock()
		return
	}
}

// handOff gives ready unit u to a new driver, or queues it when
// MaxConcurrency drivers are running; one of them takes it when it runs out
// of work.
func (r *exec) handOff(u int32) {
	r.mu.Lock()
	if r.active >= r.limit {
		r.queue = append(r.queue, u)
		r.mu.Unlock()
		return
	}
	r.active++
	r.mu.Unlock()
	r.wg.Go(func() { r.drive(u) })
}

func (r *exec) canceled() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *exec) runUnit(u int32) {
	us := &r.wf.units[u]
	if us.cycle >= 0 {
		r.runCycle(us.cycle)
		return
	}
	i := us.nodes[0]
	if r.canceled() {
		r.settle(i, stateCanceled, nil)
		return
	}
	r.runNode(i)
}

// settle records a node's final state for this call.
func (r *exec) settle(i int32, st state, err error) {
	r.states[i] = st
	r.errs[i] = err
	t := &r.nodes[i]
	t.Outcome = st.outcome()
	t.Error = ""
	if err != nil {
		t.Error = err.Error()
	}
}

// gate decides from the states of a node's sources whether it runs
// (statePending), is skipped, or fails upstream.
func (r *exec) gate(s *nodeSpec) state {
	live, dead := 0, 0
	for k := range s.inputs {
		b := &s.inputs[k]
		if b.src < 0 {
			continue
		}
		switch st := r.states[b.src]; {
		case st.failed():
			return stateUpstreamFailed
		case st == stateSkipped || (b.branch != "" && !r.onBranch(b.src, b.branch)):
			dead++
		default:
			live++
		}
	}
	for _, a := range s.after {
		switch st := r.states[a]; {
		case st.failed():
			return stateUpstreamFailed
		case st == stateSkipped:
			dead++
		}
	}
	if dead == 0 || (s.merge && live > 0) {
		return statePending
	}
	return stateSkipped
}

// onBranch reports whether switch src took branch. A switch whose output is
// not a Branch (a fallback value) took none.
func (r *exec) onBranch(src int32, branch string) bool {
	b, ok := r.results[src].(Branch)
	return ok && b.Name == branch
}

// bind fills the node's inputs into its part of the buffer.
func (r *exec) bind(s *nodeSpec, vals []any, backValue any, useBack bool) error {
	for k := range s.inputs {
		b := &s.inputs[k]
		if useBack && k == s.backInput {
			vals[k] = backValue
			continue
		}
		var v any
		switch {
		case b.src == srcParam:
			v = r.info.params[b.param]
		case b.src == srcBack:
			vals[k] = absent{}
			continue
		case !r.states[b.src].produced() || (b.branch != "" && !r.onBranch(b.src, b.branch)):
			vals[k] = absent{} // only a merge gets here
			continue
		case b.branch != "":
			v = r.results[b.src].(Branch).Value
		default:
			v = r.results[b.src]
		}
		if len(b.path) > 0 {
			var err error
			if v, err = resolvePath(v, b.path); err != nil {
				return fmt.Errorf("input %q: %w", b.name, err)
			}
		}
		vals[k] = v
	}
	return nil
}

// runNode runs node i if its sources allow it, and records the outcome.
func (r *exec) runNode(i int32) { r.runNodeBack(i, nil, false) }

// runNodeBack is runNode for a cycle's nodes: with useBack, the input the
// cycle's back-edge feeds holds backValue instead of its forward binding.
func (r *exec) runNodeBack(i int32, backValue any, useBack bool) {
	s := &r.wf.nodes[i]
	if g := r.gate(s); g != statePending {
		r.settle(i, g, nil)
		return
	}
	vals := r.buf[s.off : s.off+len(s.inputs)]
	if err := r.bind(s, vals, backValue, useBack); err != nil {
		r.settle(i, stateFailed, err)
		return
	}
	in := Inputs{names: s.names, values: vals, node: s.id, run: &r.info}
	t := &r.nodes[i]
	start := r.clock.Now()
	var (
		out           any
		st            state
		replaced, err error
	)
	if s.policy == nil {
		t.Attempts++
		out, err = safeRun(r.ctx, s.node, in)
		st = stateOK
	} else {
		out, st, replaced, err = r.callWithPolicy(s, in, t)
	}
	if t.Start.IsZero() {
		t.Start = start
	}
	t.Duration += r.clock.Now().Sub(start)
	clear(vals) // drop references to upstream outputs
	if err != nil {
		if r.ctx.Err() != nil {
			st = stateCanceled
		} else {
			st = stateFailed
		}
		r.results[i] = nil
		r.settle(i, st, err)
		return
	}
	r.results[i] = out
	r.settle(i, st, nil)
	if replaced != nil {
		t.Error = replaced.Error()
	}
	r.annotate(t, out)
}

func (r *exec) annotate(t *NodeTrace, out any) {
	if out == nil {
		return
	}
	if a, ok := out.(annotator); ok {
		a.annotate(t)
	}
	if rc, ok := out.(RowCounter); ok {
		n := rc.RowCount()
		t.Rows = &n
	}
}

// safeRun calls the node and turns a panic into a *PanicError.
func safeRun(ctx context.Context, n Node, in Inputs) (out any, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return n.Run(ctx, in)
}

// callWithPolicy calls a node through its options, in the order NodeOption
// documents. When err is nil the state is stateOK, stateCached or
// stateFallback; for a fallback, replaced is the error it replaced.
func (r *exec) callWithPolicy(s *nodeSpec, in Inputs, t *NodeTrace) (out any, st state, replaced, err error) {
	p := s.policy
	ctx := r.ctx
	var cacheKey string
	if p.cache != nil {
		k, err := p.cacheKey(in)
		if err != nil {
			r.rt.log.Warn("workflow cache key failed; calling the node", zap.String("node", s.id), zap.Error(err))
		} else {
			v, ok, err := p.cache.Get(ctx, k)
			switch {
			case err != nil:
				r.rt.log.Warn("workflow cache get failed; calling the node", zap.String("node", s.id), zap.Error(err))
			case ok:
				return v, stateCached, nil, nil
			}
			cacheKey = k
		}
	}

	callCtx := ctx
	if p.timeout > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, p.timeout)
		defer cancel()
	}
	attempt := func() (any, error) {
		t.Attempts++
		if p.limiter != nil {
			if err := p.limiter.wait(callCtx); err != nil {
				return nil, err
			}
		}
		if p.breaker != nil {
			return p.breaker.do(func() (any, error) { return safeRun(callCtx, s.node, in) })
		}
		return safeRun(callCtx, s.node, in)
	}
	if p.retry != nil {
		out, err = p.retry.do(callCtx, attempt)
	} else {
		out, err = attempt()
	}
	if err == nil {
		if cacheKey != "" {
			if err := p.cache.Set(ctx, cacheKey, out, p.cacheTTL); err != nil {
				r.rt.log.Warn("workflow cache set failed", zap.String("node", s.id), zap.Error(err))
			}
		}
		return out, stateOK, nil, nil
	}
	if ctx.Err() != nil {
		return nil, stateFailed, nil, err // the run was cancelled: no fallback
	}
	fallback := p.fallback
	if p.timeout > 0 && (errors.Is(callCtx.Err(), context.DeadlineExceeded) || errors.Is(err, errWaitPastDeadline)) {
		err = fmt.Errorf("%w after %v: %w", ErrTimeout, p.timeout, err)
		if p.timeoutFallback.set {
			fallback = p.timeoutFallback
		}
	}
	if !fallback.set {
		return nil, stateFailed, nil, err
	}
	if fallback.node == nil {
		return fallback.value, stateFallback, err, nil
	}
	v, ferr := safeRun(ctx, fallback.node, in)
	if ferr != nil {
		return nil, stateFailed, nil, fmt.Errorf("%w; fallback: %w", err, ferr)
	}
	return v, stateFallback, err, nil
}
