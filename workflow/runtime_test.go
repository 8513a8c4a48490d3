package workflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

type customer struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
	Tier string // no tag: found by field name, any case
}

// rowsResult stands for a SQL node's result: it resolves paths itself and
// reports its rows.
type rowsResult struct{ rows []map[string]any }

func (r rowsResult) Lookup(key string) (any, bool) {
	switch key {
	case "rows":
		return r.rows, true
	case "row_count":
		return len(r.rows), true
	}
	return nil, false
}

func (r rowsResult) RowCount() int64 { return int64(len(r.rows)) }

// echo outputs its inputs as a map.
var echo = workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) { return in.Map(), nil })

func TestConnectionsResolveDottedPathsIntoNestedOutputs(t *testing.T) {
	t.Parallel()
	fetch := value(map[string]any{
		"rows":   []any{map[string]any{"id": 7, "total": 12.5}},
		"result": map[string]any{"rows": []map[string]any{{"id": 8}}},
		"cust":   &customer{ID: 3, Name: "Ada", Tier: "gold"},
		"tags":   []string{"x", "y"},
	})
	wf := build(t, workflow.New("paths").
		Add("fetch", fetch).
		Add("sql", value(rowsResult{rows: []map[string]any{{"id": 1}, {"id": 2}}})).
		Add("process", echo).
		Connect("fetch", "rows.0.id", "process", "order_id").
		Connect("fetch", "result.rows", "process", "rows").
		Connect("fetch", "cust.name", "process", "name").
		Connect("fetch", "cust.tier", "process", "tier").
		Connect("fetch", "tags.1", "process", "tag").
		Connect("sql", "rows.1.id", "process", "second").
		Connect("sql", "row_count", "process", "count").
		Connect("fetch", "", "process", "all").
		BindParam("process", "customer", "order.customer.id").
		BindParam("process", "limit", "limit"))

	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{
		"order": map[string]any{"customer": map[string]any{"id": "c-9"}},
		"limit": 10,
	})
	require.NoError(t, err)
	got, ok := run.Result("process")
	require.True(t, ok)
	m := got.(map[string]any)
	assert.Equal(t, 7, m["order_id"])
	assert.Equal(t, []map[string]any{{"id": 8}}, m["rows"])
	assert.Equal(t, "Ada", m["name"])
	assert.Equal(t, "gold", m["tier"])
	assert.Equal(t, "y", m["tag"])
	assert.Equal(t, 2, m["second"])
	assert.Equal(t, 2, m["count"])
	assert.Equal(t, "c-9", m["customer"])
	assert.Equal(t, 10, m["limit"])
	assert.Contains(t, m["all"], "rows")

	v, err := run.Lookup("fetch", "rows.0.total")
	require.NoError(t, err)
	assert.Equal(t, 12.5, v)
	assert.Equal(t, int64(2), *nodeTrace(t, run, "sql").Rows, "the SQL-like output reports its rows")
	assert.Nil(t, nodeTrace(t, run, "fetch").Rows)
}

func TestAPathThatDoesNotResolveFailsTheReadingNode(t *testing.T) {
	t.Parallel()
	wf := build(t, workflow.New("paths").
		Add("fetch", value(map[string]any{"rows": []any{}})).
		Add("process", echo).
		Add("next", echo).
		Connect("fetch", "rows.0.id", "process", "order_id").
		Connect("process", "", "next", "x"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.Error(t, err)
	var pe *workflow.PathError
	require.ErrorAs(t, err, &pe)
	assert.ErrorIs(t, err, workflow.ErrPath)
	assert.Contains(t, err.Error(), `node process: input "order_id": path "rows.0.id": at "rows": index 0 out of range (length 0)`)
	assert.Equal(t, map[string]workflow.Outcome{"fetch": "ok", "process": "failed", "next": "upstream_failed"}, outcomes(run))
}

func TestIndependentNodesRunConcurrently(t *testing.T) {
	t.Parallel()
	const n = 4
	var arrived sync.WaitGroup
	arrived.Add(n)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	// Each node waits until all have started: only a concurrent run ends.
	barrier := workflow.Func(func(ctx context.Context, _ workflow.Inputs) (any, error) {
		arrived.Done()
		select {
		case <-all:
			return "met", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	b := workflow.New("fan").Add("start", value(1)).Add("end", workflow.Merge(workflow.MergeList))
	for i := range n {
		id := fmt.Sprintf("n%d", i)
		b.Add(id, barrier).Connect("start", "", id, "x").Connect(id, "", "end", id)
	}
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), build(t, b), nil)
	require.NoError(t, err)
	v, _ := run.Result("end")
	assert.Equal(t, []any{"met", "met", "met", "met"}, v)
}

func TestMaxConcurrencyBoundsTheNodesRunningAtOnce(t *testing.T) {
	t.Parallel()
	var g gauge
	slow := workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		g.enter()
		defer g.leave()
		time.Sleep(10 * time.Millisecond)
		return nil, nil
	})
	b := workflow.New("bounded")
	for i := range 12 {
		b.Add(fmt.Sprintf("n%d", i), slow)
	}
	_, err := execute(t, newRuntime(t, workflow.RuntimeOptions{MaxConcurrency: 3}), build(t, b), nil)
	require.NoError(t, err)
	assert.LessOrEqual(t, g.peak(), 3)
	assert.GreaterOrEqual(t, g.peak(), 2, "independent nodes overlap")
}

func TestAFailedNodeFailsOnlyTheNodesThatDependOnIt(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	// a → b → c, a → d, b → e (after), x alone.
	wf := build(t, workflow.New("fail").
		Add("a", value(1)).Add("b", failing(boom)).Add("c", echo).Add("d", echo).Add("e", echo).Add("x", value(2)).
		Connect("a", "", "b", "in").Connect("b", "", "c", "in").Connect("a", "", "d", "in").
		After("e", "b"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.Error(t, err)
	assert.ErrorIs(t, err, boom)
	var re *workflow.RunError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, []string{"b"}, re.Nodes())
	assert.Equal(t, run.ID, re.RunID)
	assert.Equal(t, map[string]workflow.Outcome{
		"a": "ok", "b": "failed", "c": "upstream_failed", "d": "ok", "e": "upstream_failed", "x": "ok",
	}, outcomes(run))
	assert.Equal(t, workflow.OutcomeFailed, run.Trace.Outcome)
	assert.Equal(t, "boom", nodeTrace(t, run, "b").Error)
	_, ok := run.Result("b")
	assert.False(t, ok)
	v, ok := run.Result("d")
	assert.True(t, ok)
	assert.Equal(t, map[string]any{"in": 1}, v)
	assert.Equal(t, []string{"a", "d", "x"}, sortedKeys(run.Results()))
}

func sortedKeys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestCancellingTheRunStopsNewNodesAndCancelsRunningOnes(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	var laterCalled atomic.Bool
	blocking := workflow.Func(func(ctx context.Context, _ workflow.Inputs) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	later := workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		laterCalled.Store(true)
		return nil, nil
	})
	wf := build(t, workflow.New("cancel").Add("a", blocking).Add("b", later).After("b", "a"))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	run, err := newRuntime(t, workflow.RuntimeOptions{}).Execute(ctx, wf, nil)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, laterCalled.Load())
	assert.Equal(t, map[string]workflow.Outcome{"a": "canceled", "b": "canceled"}, outcomes(run))
	assert.Equal(t, workflow.OutcomeCanceled, run.Trace.Outcome)
}

func TestAPanickingNodeFailsWithAPanicError(t *testing.T) {
	t.Parallel()
	wf := build(t, workflow.New("panic").Add("a", workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		panic("kaput")
	})))
	_, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	var pe *workflow.PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "kaput", pe.Value)
	assert.NotEmpty(t, pe.Stack)
	assert.ErrorIs(t, err, workflow.ErrPanic)
}

func TestOneWorkflowRunsConcurrentlyManyTimes(t *testing.T) {
	t.Parallel()
	add := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		x, err := workflow.Input[int](in, "x")
		if err != nil {
			return nil, err
		}
		y, err := workflow.Input[int](in, "y")
		return x + y, err
	})
	double := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		x, err := workflow.Input[int](in, "x")
		return 2 * x, err
	})
	// A diamond: n → (l, r) → sum.
	wf := build(t, workflow.New("diamond").
		Add("l", double).Add("r", double).Add("sum", add).
		BindParam("l", "x", "n").BindParam("r", "x", "n").
		Connect("l", "", "sum", "x").Connect("r", "", "sum", "y"))
	rt := newRuntime(t, workflow.RuntimeOptions{TraceHistory: 10})
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				n := g*100 + i
				run, err := rt.Execute(context.Background(), wf, map[string]any{"n": n})
				if !assert.NoError(t, err) {
					return
				}
				v, _ := run.Result("sum")
				assert.Equal(t, 4*n, v)
			}
		})
	}
	wg.Wait()
	assert.Len(t, rt.Traces(), 10)
}

func TestRunIDsAreUniqueAndOrderedByStartTime(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	rt := newRuntime(t, workflow.RuntimeOptions{Clock: clock, TraceHistory: -1})
	wf := build(t, workflow.New("ids").Add("a", noop))
	seen := make(map[string]bool)
	prev := ""
	for range 1000 {
		clock.Advance(time.Millisecond)
		run, err := rt.Execute(context.Background(), wf, nil)
		require.NoError(t, err)
		require.Len(t, run.ID, 32)
		require.False(t, seen[run.ID])
		seen[run.ID] = true
		require.Greater(t, run.ID, prev)
		prev = run.ID
	}
	assert.Empty(t, rt.Traces(), "a negative TraceHistory keeps none")
}

func TestTraceIsJSONAndTheLastRunsAreKept(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	rt := newRuntime(t, workflow.RuntimeOptions{Clock: clock, TraceHistory: 2})
	step := workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		clock.Advance(1500 * time.Microsecond)
		return rowsResult{rows: []map[string]any{{"id": 1}}}, nil
	})
	wf := build(t, workflow.New("traced").Add("a", step).Add("b", failing(errors.New("no"))).Add("c", noop).After("c", "b"))
	var ids []string
	for range 3 {
		run, err := rt.Execute(context.Background(), wf, nil)
		require.Error(t, err)
		ids = append(ids, run.ID)
	}
	_, ok := rt.Trace(ids[0])
	assert.False(t, ok, "the oldest run was dropped")
	tr, ok := rt.Trace(ids[2])
	require.True(t, ok)
	assert.Equal(t, []string{ids[2], ids[1]}, []string{rt.Traces()[0].RunID, rt.Traces()[1].RunID})

	b, err := json.Marshal(tr)
	require.NoError(t, err)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	assert.Equal(t, ids[2], raw["run_id"])
	assert.Equal(t, "traced", raw["workflow"])
	assert.Equal(t, "failed", raw["outcome"])
	assert.Equal(t, 1.5, raw["duration_ms"])
	assert.Contains(t, raw["error"], "node b: no")
	nodes := raw["nodes"].([]any)
	require.Len(t, nodes, 3)
	a := nodes[0].(map[string]any)
	assert.Equal(t, map[string]any{
		"node": "a", "kind": "func", "outcome": "ok", "start": "2025-01-01T00:00:00.003Z",
		"duration_ms": 1.5, "attempts": 1.0, "rows": 1.0,
	}, a)
	c := nodes[2].(map[string]any)
	assert.Equal(t, map[string]any{"node": "c", "kind": "func", "outcome": "upstream_failed", "duration_ms": 0.0, "attempts": 0.0}, c)

	var back workflow.Trace
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, *tr, back, "the JSON round-trips")
}

func TestAfterOrdersNodesThatShareNoData(t *testing.T) {
	t.Parallel()
	var order []string
	var mu sync.Mutex
	rec := func(id string) workflow.Node {
		return workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, id)
			return nil, nil
		})
	}
	wf := build(t, workflow.New("after").Add("write", rec("write")).Add("notify", rec("notify")).Add("audit", rec("audit")).
		After("notify", "write").After("audit", "notify"))
	_, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"write", "notify", "audit"}, order)
}

func TestInputConvertsNumbersThatFitAndRejectsOtherTypes(t *testing.T) {
	t.Parallel()
	in := workflow.NewInputs(map[string]any{"f": 3.0, "half": 3.5, "s": "x", "i": 7, "n": json.Number("12")})
	i, err := workflow.Input[int](in, "f")
	require.NoError(t, err)
	assert.Equal(t, 3, i)
	f, err := workflow.Input[float64](in, "i")
	require.NoError(t, err)
	assert.Equal(t, 7.0, f)
	i64, err := workflow.Input[int64](in, "n")
	require.NoError(t, err)
	assert.Equal(t, int64(12), i64)
	_, err = workflow.Input[int](in, "half")
	assert.ErrorIs(t, err, workflow.ErrInputType)
	_, err = workflow.Input[int](in, "s")
	assert.ErrorIs(t, err, workflow.ErrInputType)
	_, err = workflow.Input[string](in, "nope")
	assert.ErrorIs(t, err, workflow.ErrMissingInput)
	s, err := workflow.Input[string](in, "s")
	require.NoError(t, err)
	assert.Equal(t, "x", s)
}

func TestNodesSeeTheirIDTheRunIDAndTheParameters(t *testing.T) {
	t.Parallel()
	var seen workflow.Inputs
	var node, runID string
	var param any
	wf := build(t, workflow.New("info").Add("a", workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		seen = in
		node, runID = in.Node(), in.RunID()
		param, _ = in.Param("tenant")
		return nil, nil
	})))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"tenant": "acme"})
	require.NoError(t, err)
	assert.Equal(t, "a", node)
	assert.Equal(t, run.ID, runID)
	assert.Equal(t, "acme", param)
	assert.Equal(t, map[string]any{"tenant": "acme"}, seen.Params())
}
