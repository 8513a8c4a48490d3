package workflow_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

func TestSwitchSkipsTheBranchesNotTakenAndMergeJoinsThem(t *testing.T) {
	t.Parallel()
	route := workflow.Switch(func(_ context.Context, in workflow.Inputs) (string, error) {
		amount, err := workflow.Input[float64](in, "amount")
		if amount >= 100 {
			return "big", err
		}
		return "small", err
	}, "big", "small")
	tag := func(label string) workflow.Node {
		return workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
			return label + ":" + in.Value("order").(string), nil
		})
	}
	wf := build(t, workflow.New("route").
		Add("route", route).
		Add("review", tag("review")).
		Add("approve", tag("approve")).
		Add("auto", tag("auto")).
		Add("join", workflow.Merge(workflow.MergeFirst)).
		Add("done", echo).
		BindParam("route", "amount", "amount").
		BindParam("route", "order", "order").
		Connect("route", "big.order", "review", "order").
		Connect("review", "", "approve", "order").
		Connect("route", "small.order", "auto", "order").
		Connect("approve", "", "join", "big").
		Connect("auto", "", "join", "small").
		Connect("join", "", "done", "result"))
	rt := newRuntime(t, workflow.RuntimeOptions{})

	tests := []struct {
		name     string
		amount   any
		branch   string
		result   string
		outcomes map[string]workflow.Outcome
	}{
		{"a big order takes the review branch", 500, "big", "approve:review:o-1", map[string]workflow.Outcome{
			"route": "ok", "review": "ok", "approve": "ok", "auto": "skipped", "join": "ok", "done": "ok",
		}},
		{"a small order takes the automatic branch", 5.0, "small", "auto:o-1", map[string]workflow.Outcome{
			"route": "ok", "review": "skipped", "approve": "skipped", "auto": "ok", "join": "ok", "done": "ok",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run, err := execute(t, rt, wf, map[string]any{"amount": tt.amount, "order": "o-1"})
			require.NoError(t, err)
			assert.Equal(t, tt.outcomes, outcomes(run))
			assert.Equal(t, tt.branch, nodeTrace(t, run, "route").Branch)
			v, err := run.Lookup("done", "result")
			require.NoError(t, err)
			assert.Equal(t, tt.result, v)
		})
	}
}

func TestSwitchOnRoutesByValue(t *testing.T) {
	t.Parallel()
	sw := workflow.SwitchOn("status", map[string]string{"paid": "ship", "refunded": "refund", "3": "three"}, "other")
	wf := build(t, workflow.New("status").Add("s", sw).
		Add("ship", value("shipped")).Add("refund", value("refunded")).Add("other", value("held")).Add("three", value(3)).
		BindParam("s", "status", "status").
		Connect("s", "ship", "ship", "x").Connect("s", "refund", "refund", "x").
		Connect("s", "other", "other", "x").Connect("s", "three", "three", "x"))
	rt := newRuntime(t, workflow.RuntimeOptions{})
	for status, ran := range map[any]string{"paid": "ship", "refunded": "refund", "lost": "other", 3: "three"} {
		run, err := execute(t, rt, wf, map[string]any{"status": status})
		require.NoError(t, err)
		for _, id := range []string{"ship", "refund", "other", "three"} {
			want := workflow.OutcomeSkipped
			if id == ran {
				want = workflow.OutcomeOK
			}
			assert.Equal(t, want, nodeTrace(t, run, id).Outcome, "status %v, node %s", status, id)
		}
	}
}

func TestSwitchChoosingAnUndeclaredBranchFails(t *testing.T) {
	t.Parallel()
	sw := workflow.Switch(func(context.Context, workflow.Inputs) (string, error) { return "maybe", nil }, "yes", "no")
	wf := build(t, workflow.New("s").Add("s", sw).Add("yes", noop).Connect("s", "yes", "yes", "x"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `switch chose branch "maybe"`)
	assert.Equal(t, map[string]workflow.Outcome{"s": "failed", "yes": "upstream_failed"}, outcomes(run))
}

func TestMergeCombinesPresentInputsInDeclarationOrder(t *testing.T) {
	t.Parallel()
	sw := workflow.Switch(func(context.Context, workflow.Inputs) (string, error) { return "on", nil }, "on", "off")
	tests := []struct {
		name string
		mode workflow.MergeMode
		want any
	}{
		{"MergeFirst takes the first present input", workflow.MergeFirst, []any{1, 2}},
		{"MergeMap maps input names to values", workflow.MergeMap, map[string]any{"a": []any{1, 2}, "b": []int{3}}},
		{"MergeList lists the values", workflow.MergeList, []any{[]any{1, 2}, []int{3}}},
		{"MergeConcat concatenates lists", workflow.MergeConcat, []any{1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wf := build(t, workflow.New("merge").
				Add("s", sw).Add("a", value([]any{1, 2})).Add("b", value([]int{3})).Add("off", value([]any{9})).
				Add("m", workflow.Merge(tt.mode)).
				Connect("s", "off", "off", "x").
				Connect("a", "", "m", "a").Connect("off", "", "m", "off").Connect("b", "", "m", "b"))
			run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
			require.NoError(t, err)
			assert.Equal(t, workflow.OutcomeSkipped, nodeTrace(t, run, "off").Outcome)
			v, _ := run.Result("m")
			assert.Equal(t, tt.want, v)
		})
	}
}

func TestMergeIsSkippedWhenEveryInputIsAndFailsWhenOneFailed(t *testing.T) {
	t.Parallel()
	sw := workflow.Switch(func(context.Context, workflow.Inputs) (string, error) { return "on", nil }, "on", "off")
	wf := build(t, workflow.New("merge").
		Add("s", sw).Add("x", noop).Add("y", noop).Add("bad", failing(errors.New("bad"))).
		Add("skipped", workflow.Merge(workflow.MergeList)).Add("failed", workflow.Merge(workflow.MergeList)).
		Connect("s", "off", "x", "in").Connect("s", "off", "y", "in").
		Connect("x", "", "skipped", "x").Connect("y", "", "skipped", "y").
		Connect("x", "", "failed", "x").Connect("bad", "", "failed", "bad"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	require.Error(t, err)
	assert.Equal(t, workflow.OutcomeSkipped, nodeTrace(t, run, "skipped").Outcome)
	assert.Equal(t, workflow.OutcomeUpstreamFailed, nodeTrace(t, run, "failed").Outcome)
}
