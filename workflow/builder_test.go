package workflow_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

func TestBuildReportsEachProblemWithItsSentinel(t *testing.T) {
	t.Parallel()
	sw := func() workflow.Node {
		return workflow.Switch(func(context.Context, workflow.Inputs) (string, error) { return "a", nil }, "a", "b")
	}
	tests := []struct {
		name  string
		build func(b *workflow.Builder)
		want  error
		msg   string
	}{
		{"an unknown source node", func(b *workflow.Builder) {
			b.Add("b", noop).Connect("nope", "", "b", "x")
		}, workflow.ErrUnknownNode, `connect nope → b.x: unknown node "nope"`},
		{"an unknown target node", func(b *workflow.Builder) {
			b.Add("a", noop).Connect("a", "rows", "nope", "x")
		}, workflow.ErrUnknownNode, `connect a.rows → nope.x: unknown node "nope"`},
		{"an unknown node in a parameter binding", func(b *workflow.Builder) {
			b.Add("a", noop).BindParam("nope", "x", "p")
		}, workflow.ErrUnknownNode, `bind param p → nope.x: unknown node "nope"`},
		{"an unknown dependency", func(b *workflow.Builder) {
			b.Add("a", noop).After("a", "nope")
		}, workflow.ErrUnknownNode, `after: a waits for nope: unknown node "nope"`},
		{"a duplicate node ID", func(b *workflow.Builder) {
			b.Add("a", noop).Add("a", noop)
		}, workflow.ErrDuplicateNode, "add node a: duplicate node ID"},
		{"an input connected twice", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Add("c", noop).
				Connect("a", "", "c", "x").Connect("b", "", "c", "x")
		}, workflow.ErrDuplicateInput, `connect b → c.x: input bound twice: c.x is already bound by "connect a → c.x"`},
		{"an input connected and bound to a parameter", func(b *workflow.Builder) {
			b.Add("a", noop).Add("c", noop).Connect("a", "", "c", "x").BindParam("c", "x", "p")
		}, workflow.ErrDuplicateInput, "bind param p → c.x: input bound twice"},
		{"an undeclared cycle", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Add("c", noop).
				Connect("a", "", "b", "x").Connect("b", "", "c", "x").Connect("c", "", "a", "x")
		}, workflow.ErrUndeclaredCycle, "undeclared cycle among nodes a, b, c"},
		{"a node connected to itself", func(b *workflow.Builder) {
			b.Add("a", noop).Connect("a", "", "a", "x")
		}, workflow.ErrUndeclaredCycle, "undeclared cycle among nodes a"},
		{"a loop through a dependency", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Connect("a", "", "b", "x").After("a", "b")
		}, workflow.ErrUndeclaredCycle, "among nodes a, b"},
		{"a declared cycle that closes no loop", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Connect("a", "", "b", "x").
				Cycle("loop", workflow.Cycle{From: "a", To: "b", Input: "y", MaxIterations: 3})
		}, workflow.ErrNotACycle, "cycle loop: declared cycle is not a cycle: b does not lead to a"},
		{"a declared cycle between unconnected nodes", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).
				Cycle("loop", workflow.Cycle{From: "b", To: "a", Input: "y", MaxIterations: 3})
		}, workflow.ErrNotACycle, "a does not lead to b"},
		{"a declared cycle on an unknown node", func(b *workflow.Builder) {
			b.Add("a", noop).Cycle("loop", workflow.Cycle{From: "a", To: "nope", Input: "y", MaxIterations: 3})
		}, workflow.ErrUnknownNode, `cycle loop: unknown node "nope"`},
		{"a declared cycle without iterations", func(b *workflow.Builder) {
			b.Add("a", noop).Cycle("loop", workflow.Cycle{From: "a", To: "a", Input: "y"})
		}, workflow.ErrInvalidWorkflow, "MaxIterations is 0, want at least 1"},
		{"two cycles sharing a node", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Connect("a", "", "b", "x").
				Cycle("one", workflow.Cycle{From: "b", To: "a", Input: "y", MaxIterations: 2}).
				Cycle("two", workflow.Cycle{From: "b", To: "b", Input: "z", MaxIterations: 2})
		}, workflow.ErrInvalidWorkflow, "node b is also in cycle one"},
		{"cycles that depend on each other", func(b *workflow.Builder) {
			b.Add("t1", noop).Add("f1", noop).Add("t2", noop).Add("f2", noop).
				Connect("t1", "", "f1", "x").Connect("t2", "", "f2", "x").
				Connect("t1", "", "f2", "y").Connect("t2", "", "f1", "y").
				Cycle("one", workflow.Cycle{From: "f1", To: "t1", Input: "back", MaxIterations: 2}).
				Cycle("two", workflow.Cycle{From: "f2", To: "t2", Input: "back", MaxIterations: 2})
		}, workflow.ErrUndeclaredCycle, "cycles one, two depend on each other"},
		{"a connection from a switch that names no branch", func(b *workflow.Builder) {
			b.Add("s", sw()).Add("b", noop).Connect("s", "", "b", "x")
		}, workflow.ErrUnknownBranch, "a connection from switch s names a branch first (one of a, b)"},
		{"a connection from a switch's unknown branch", func(b *workflow.Builder) {
			b.Add("s", sw()).Add("b", noop).Connect("s", "c.x", "b", "x")
		}, workflow.ErrUnknownBranch, `unknown switch branch "c" of switch s (branches: a, b)`},
		{"an empty path segment", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Connect("a", "rows..id", "b", "x")
		}, workflow.ErrInvalidWorkflow, `path "rows..id" has an empty segment`},
		{"an empty input name", func(b *workflow.Builder) {
			b.Add("a", noop).Add("b", noop).Connect("a", "", "b", "")
		}, workflow.ErrInvalidWorkflow, "empty input name"},
		{"an empty node ID", func(b *workflow.Builder) {
			b.Add("", noop)
		}, workflow.ErrInvalidWorkflow, "empty node ID"},
		{"a nil node", func(b *workflow.Builder) {
			b.Add("a", nil)
		}, workflow.ErrInvalidWorkflow, "add node a: invalid workflow: nil node"},
		{"a node with invalid settings", func(b *workflow.Builder) {
			b.Add("m", workflow.Map(nil, workflow.MapOptions{}))
		}, workflow.ErrInvalidWorkflow, "node m: invalid workflow: map: nil body"},
		{"an invalid option", func(b *workflow.Builder) {
			b.Add("a", noop, workflow.WithTimeout(0, workflow.Fallback{}))
		}, workflow.ErrInvalidWorkflow, "WithTimeout: duration 0s is not positive"},
		{"a workflow without nodes", func(b *workflow.Builder) {}, workflow.ErrInvalidWorkflow, "no nodes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := workflow.New("orders")
			tt.build(b)
			wf, err := b.Build()
			require.Error(t, err)
			assert.Nil(t, wf)
			assert.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}

func TestBuildReportsEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	_, err := workflow.New("orders").
		Add("a", noop).Add("a", noop).Add("b", noop).
		Connect("a", "", "nope", "x").
		Connect("a", "", "b", "x").Connect("a", "id", "b", "x").
		Connect("b", "", "a", "y").
		Build()
	require.Error(t, err)
	for _, want := range []error{workflow.ErrDuplicateNode, workflow.ErrUnknownNode, workflow.ErrDuplicateInput, workflow.ErrUndeclaredCycle} {
		assert.ErrorIs(t, err, want)
	}
	assert.Contains(t, err.Error(), `workflow "orders": `)
}

func TestBuildAcceptsConnectionsDeclaredBeforeTheirNodes(t *testing.T) {
	t.Parallel()
	wf := build(t, workflow.New("late").
		Connect("a", "", "b", "x").
		Add("b", workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) { return in.Value("x"), nil })).
		Add("a", value(7)))
	assert.Equal(t, []string{"a", "b"}, wf.Nodes())
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.NoError(t, err)
	v, ok := run.Result("b")
	require.True(t, ok)
	assert.Equal(t, 7, v)
}

func TestBuiltWorkflowIsUnaffectedByLaterBuilderCalls(t *testing.T) {
	t.Parallel()
	b := workflow.New("frozen").Add("a", value(1))
	wf := build(t, b)
	b.Add("b", value(2)).Connect("a", "", "b", "x")
	assert.Equal(t, []string{"a"}, wf.Nodes())
	_, err := b.Build()
	require.NoError(t, err)
}

func TestWorkflowListsTheParametersItNeeds(t *testing.T) {
	t.Parallel()
	wf := build(t, workflow.New("p").Add("a", noop).
		BindParam("a", "x", "order.id").BindParam("a", "y", "limit").BindParam("a", "z", "order.customer"))
	assert.Equal(t, []string{"limit", "order"}, wf.Params())
	assert.Equal(t, "p", wf.Name())
	_, err := newRuntime(t, workflow.RuntimeOptions{}).Execute(context.Background(), wf, map[string]any{})
	require.Error(t, err)
	assert.True(t, errors.Is(err, workflow.ErrMissingParam))
	assert.Contains(t, err.Error(), `"limit"`)
	assert.Contains(t, err.Error(), `"order"`)
}
