package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

// mapWorkflow feeds items to a map node m and returns the workflow.
func mapWorkflow(t *testing.T, m workflow.Node) *workflow.Workflow {
	return build(t, workflow.New("map").Add("m", m).BindParam("m", "items", "items"))
}

func ints(n int) []any {
	items := make([]any, n)
	for i := range items {
		items[i] = i
	}
	return items
}

func TestMapReturnsResultsInItemOrder(t *testing.T) {
	t.Parallel()
	body := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		i, err := workflow.Input[int](in, "item")
		// Later items finish first.
		time.Sleep(time.Duration(20-i) * time.Millisecond)
		return fmt.Sprintf("%d@%d", i*i, in.Value("index")), err
	})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, workflow.Map(body, workflow.MapOptions{MaxWorkers: 20})), map[string]any{"items": ints(20)})
	require.NoError(t, err)
	v, _ := run.Result("m")
	res := v.(*workflow.MapResult)
	for i, r := range res.Results {
		assert.Equal(t, fmt.Sprintf("%d@%d", i*i, i), r)
	}
	assert.Empty(t, res.Errors)
	tr := nodeTrace(t, run, "m")
	assert.Equal(t, "map", tr.Kind)
	assert.Equal(t, 20, tr.Items)
	got, err := run.Lookup("m", "results.3")
	require.NoError(t, err)
	assert.Equal(t, "9@3", got)
}

func TestMapPassesItsOtherInputsToTheBody(t *testing.T) {
	t.Parallel()
	body := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		return fmt.Sprintf("%v-%v", in.Value("prefix"), in.Value("item")), nil
	})
	wf := build(t, workflow.New("map").Add("m", workflow.Map(body, workflow.MapOptions{Items: "ids"})).
		BindParam("m", "ids", "ids").BindParam("m", "prefix", "prefix"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"ids": []string{"a", "b"}, "prefix": "p"})
	require.NoError(t, err)
	v, _ := run.Lookup("m", "results")
	assert.Equal(t, []any{"p-a", "p-b"}, v)
}

func TestMapWithContinueOnErrorReportsEachFailedItem(t *testing.T) {
	t.Parallel()
	body := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		i, _ := workflow.Input[int](in, "item")
		if i%3 == 1 {
			return nil, fmt.Errorf("bad item %d", i)
		}
		return i, nil
	})
	m := workflow.Map(body, workflow.MapOptions{MaxWorkers: 4, ContinueOnError: true})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, m), map[string]any{"items": ints(8)})
	require.NoError(t, err)
	v, _ := run.Result("m")
	res := v.(*workflow.MapResult)
	assert.Equal(t, []any{0, nil, 2, 3, nil, 5, 6, nil}, res.Results)
	require.Len(t, res.Errors, 3)
	for k, i := range []int{1, 4, 7} {
		assert.Equal(t, i, res.Errors[k].Index)
		assert.EqualError(t, res.Errors[k], fmt.Sprintf("item %d: bad item %d", i, i))
	}
	assert.Equal(t, 3, nodeTrace(t, run, "m").ItemErrors)
}

func TestMapWithoutContinueOnErrorFailsAtTheFirstFailedItem(t *testing.T) {
	t.Parallel()
	bad := errors.New("bad item")
	var mu sync.Mutex
	var after int
	body := workflow.Func(func(ctx context.Context, in workflow.Inputs) (any, error) {
		i, _ := workflow.Input[int](in, "item")
		if i == 3 {
			return nil, bad
		}
		if i > 3 {
			mu.Lock()
			after++
			mu.Unlock()
		}
		return i, nil
	})
	m := workflow.Map(body, workflow.MapOptions{MaxWorkers: 1})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, m), map[string]any{"items": ints(50)})
	require.Error(t, err)
	var ie *workflow.ItemError
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, 3, ie.Index)
	assert.ErrorIs(t, err, bad)
	assert.Equal(t, 0, after, "no item starts after the failure")
	assert.Equal(t, workflow.OutcomeFailed, nodeTrace(t, run, "m").Outcome)
}

func TestMapTimeoutPerItemFailsOnlyTheSlowItem(t *testing.T) {
	t.Parallel()
	body := workflow.Func(func(ctx context.Context, in workflow.Inputs) (any, error) {
		i, _ := workflow.Input[int](in, "item")
		switch i {
		case 1: // honours its context
			<-ctx.Done()
			return nil, ctx.Err()
		case 2: // ignores it and answers late
			time.Sleep(60 * time.Millisecond)
		}
		return i, nil
	})
	m := workflow.Map(body, workflow.MapOptions{MaxWorkers: 4, TimeoutPerItem: 20 * time.Millisecond, ContinueOnError: true})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, m), map[string]any{"items": ints(4)})
	require.NoError(t, err)
	v, _ := run.Result("m")
	res := v.(*workflow.MapResult)
	assert.Equal(t, []any{0, nil, nil, 3}, res.Results)
	require.Len(t, res.Errors, 2)
	for _, e := range res.Errors {
		assert.ErrorIs(t, e, workflow.ErrItemTimeout)
	}
	assert.ErrorIs(t, res.Errors[0], context.DeadlineExceeded)
}

func TestMapRunsBatchesOneAfterAnother(t *testing.T) {
	t.Parallel()
	const batch = 3
	var (
		mu       sync.Mutex
		finished int
		early    []int
	)
	var g gauge
	body := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		i, _ := workflow.Input[int](in, "item")
		g.enter()
		defer g.leave()
		mu.Lock()
		if finished < i/batch*batch {
			early = append(early, i) // started before its previous batch ended
		}
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		finished++
		mu.Unlock()
		return i, nil
	})
	m := workflow.Map(body, workflow.MapOptions{MaxWorkers: 10, BatchSize: batch})
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, m), map[string]any{"items": ints(10)})
	require.NoError(t, err)
	assert.Empty(t, early)
	assert.LessOrEqual(t, g.peak(), batch)
	v, _ := run.Lookup("m", "results")
	assert.Equal(t, ints(10), v)
}

func TestMapRunsAtMostMaxWorkersItemsAtOnce(t *testing.T) {
	t.Parallel()
	var g gauge
	body := workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		g.enter()
		defer g.leave()
		time.Sleep(2 * time.Millisecond)
		return nil, nil
	})
	m := workflow.Map(body, workflow.MapOptions{MaxWorkers: 4})
	_, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, m), map[string]any{"items": ints(40)})
	require.NoError(t, err)
	assert.LessOrEqual(t, g.peak(), 4)
	assert.GreaterOrEqual(t, g.peak(), 2)
}

func TestMapOfSomethingThatIsNotAListFails(t *testing.T) {
	t.Parallel()
	m := workflow.Map(noop, workflow.MapOptions{})
	_, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), mapWorkflow(t, m), map[string]any{"items": "abc"})
	assert.ErrorIs(t, err, workflow.ErrInputType)
	assert.Contains(t, err.Error(), "string, want a list")
}
