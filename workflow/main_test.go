package workflow_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/workflow"
)

// The cluster gives the Redis cache tests a real Redis; pgtest.Run also
// checks that no test leaves a goroutine behind.
func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// newRuntime returns a runtime that logs to the test.
func newRuntime(t testing.TB, o workflow.RuntimeOptions) *workflow.Runtime {
	t.Helper()
	if o.Logger == nil {
		if tt, ok := t.(*testing.T); ok {
			o.Logger = zaptest.NewLogger(tt)
		}
	}
	return workflow.NewRuntime(o)
}

func build(t testing.TB, b *workflow.Builder) *workflow.Workflow {
	t.Helper()
	wf, err := b.Build()
	require.NoError(t, err)
	return wf
}

// execute runs wf with a deadline that keeps a broken test from hanging.
func execute(t testing.TB, rt *workflow.Runtime, wf *workflow.Workflow, params map[string]any) (*workflow.Run, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return rt.Execute(ctx, wf, params)
}

// nodeTrace returns the trace entry of node id.
func nodeTrace(t testing.TB, run *workflow.Run, id string) workflow.NodeTrace {
	t.Helper()
	for _, n := range run.Trace.Nodes {
		if n.Node == id {
			return n
		}
	}
	t.Fatalf("no trace for node %s", id)
	return workflow.NodeTrace{}
}

func outcomes(run *workflow.Run) map[string]workflow.Outcome {
	m := make(map[string]workflow.Outcome)
	for _, n := range run.Trace.Nodes {
		m[n.Node] = n.Outcome
	}
	return m
}

// value returns a node that outputs v.
func value(v any) workflow.Node {
	return workflow.Func(func(context.Context, workflow.Inputs) (any, error) { return v, nil })
}

// noop is a node that outputs nothing.
var noop = workflow.Func(func(context.Context, workflow.Inputs) (any, error) { return nil, nil })

// failing returns a node that fails with err.
func failing(err error) workflow.Node {
	return workflow.Func(func(context.Context, workflow.Inputs) (any, error) { return nil, err })
}

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time // guarded by mu
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// gauge tracks how many callers are inside at once and the most there were.
type gauge struct {
	mu       sync.Mutex
	now, max int // guarded by mu
}

func (g *gauge) enter() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now++
	g.max = max(g.max, g.now)
}

func (g *gauge) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now--
}

func (g *gauge) peak() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max
}
