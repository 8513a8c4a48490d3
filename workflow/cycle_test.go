package workflow_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

// refine is a two-node cycle: improve adds one to x, score reports it and
// whether it reached the target; the back-edge takes score's x to
// improve's x. report reads the final score.
func refine(t *testing.T, c workflow.Cycle) *workflow.Workflow {
	improve := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		x, err := workflow.Input[int](in, "x")
		return x + 1, err
	})
	score := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		x, err := workflow.Input[int](in, "x")
		return map[string]any{"x": x, "good": x >= 5}, err
	})
	c.From, c.Output, c.To, c.Input = "score", "x", "improve", "x"
	return build(t, workflow.New("refine").
		Add("improve", improve).
		Add("score", score).
		Add("report", echo).
		BindParam("improve", "x", "start").
		Connect("improve", "", "score", "x").
		Connect("score", "x", "report", "final").
		Cycle("refine", c))
}

func good(_ int, out map[string]any) bool {
	g, _ := workflow.Lookup(out["score"], "good")
	return g == true
}

func TestCycleIteratesUntilItConverges(t *testing.T) {
	t.Parallel()
	wf := refine(t, workflow.Cycle{MaxIterations: 10, Converged: good})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"start": 1})
	require.NoError(t, err)
	final, _ := run.Lookup("report", "final")
	assert.Equal(t, 5, final)
	// 1→2, 2→3, 3→4, 4→5.
	require.Len(t, run.Trace.Cycles, 1)
	assert.Equal(t, workflow.CycleTrace{Name: "refine", Iterations: 4, Converged: true, Duration: run.Trace.Cycles[0].Duration}, run.Trace.Cycles[0])
	for _, id := range []string{"improve", "score"} {
		tr := nodeTrace(t, run, id)
		assert.Equal(t, 4, tr.Iterations, id)
		assert.Equal(t, 4, tr.Attempts, id)
	}
	assert.Equal(t, 0, nodeTrace(t, run, "report").Iterations)
	assert.Equal(t, []string{"improve", "score", "report"}, wf.Nodes())
}

func TestCycleThatReachesMaxIterationsWithoutConvergingFails(t *testing.T) {
	t.Parallel()
	wf := refine(t, workflow.Cycle{MaxIterations: 3, Converged: good})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"start": 0})
	require.Error(t, err)
	assert.ErrorIs(t, err, workflow.ErrNotConverged)
	var ce *workflow.CycleError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "refine", ce.Cycle)
	assert.Equal(t, 3, ce.Iterations)
	assert.Equal(t, map[string]workflow.Outcome{"improve": "failed", "score": "failed", "report": "upstream_failed"}, outcomes(run))
	last, err := run.Lookup("score", "x")
	require.NoError(t, err, "the last iteration's outputs stay available")
	assert.Equal(t, 3, last)
	assert.False(t, run.Trace.Cycles[0].Converged)
}

func TestCycleThatAcceptsUnconvergedResultsSucceedsWithTheLast(t *testing.T) {
	t.Parallel()
	wf := refine(t, workflow.Cycle{MaxIterations: 2, Converged: good, AcceptUnconverged: true})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"start": 0})
	require.NoError(t, err)
	final, _ := run.Lookup("report", "final")
	assert.Equal(t, 2, final)
	assert.False(t, run.Trace.Cycles[0].Converged)
}

func TestCycleWithoutAPredicateRunsMaxIterations(t *testing.T) {
	t.Parallel()
	wf := refine(t, workflow.Cycle{MaxIterations: 6})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"start": 10})
	require.NoError(t, err)
	final, _ := run.Lookup("report", "final")
	assert.Equal(t, 16, final)
	assert.Equal(t, 6, run.Trace.Cycles[0].Iterations)
}

func TestASelfLoopWithOnlyTheBackEdgeStartsWithTheInputAbsent(t *testing.T) {
	t.Parallel()
	count := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		n, ok := in.Get("n")
		if !ok {
			return 1, nil
		}
		return n.(int) * 2, nil
	})
	wf := build(t, workflow.New("double").Add("count", count).
		Cycle("double", workflow.Cycle{From: "count", To: "count", Input: "n", MaxIterations: 20,
			Converged: func(_ int, out map[string]any) bool { return out["count"].(int) >= 100 }}))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.NoError(t, err)
	v, _ := run.Result("count")
	assert.Equal(t, 128, v)
	assert.Equal(t, 8, run.Trace.Cycles[0].Iterations)
}
