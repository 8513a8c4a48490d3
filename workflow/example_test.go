package workflow_test

import (
	"context"
	"fmt"
	"time"

	"github.com/kproxy/kproxy/workflow"
)

func Example() {
	// Long-lived: created once, shared by every run.
	retry := workflow.NewRetry(workflow.RetryOptions{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond})
	cache := workflow.NewLocalCache(workflow.LocalCacheOptions{Size: 1000})

	fetch := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
		customer, err := workflow.Input[string](in, "customer")
		return map[string]any{"rows": []any{
			map[string]any{"id": 17, "customer": customer, "total": 240.0},
		}}, err
	})
	route := workflow.Switch(func(_ context.Context, in workflow.Inputs) (string, error) {
		total, err := workflow.Input[float64](in, "total")
		if total > 100 {
			return "review", err
		}
		return "ship", err
	}, "review", "ship")
	label := func(what string) workflow.Node {
		return workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) {
			return fmt.Sprintf("%s order %v", what, in.Value("id")), nil
		})
	}

	wf, err := workflow.New("orders").
		Add("fetch", fetch, workflow.WithRetry(retry), workflow.WithCache(cache, workflow.KeyFromInputs("orders", "customer"), time.Minute)).
		Add("route", route).
		Add("review", label("review")).
		Add("ship", label("ship")).
		Add("done", workflow.Merge(workflow.MergeFirst)).
		BindParam("fetch", "customer", "customer").
		Connect("fetch", "rows.0.total", "route", "total").
		Connect("fetch", "rows.0.id", "route", "id").
		Connect("route", "review.id", "review", "id").
		Connect("route", "ship.id", "ship", "id").
		Connect("review", "", "done", "review").
		Connect("ship", "", "done", "ship").
		Build()
	if err != nil {
		panic(err)
	}

	rt := workflow.NewRuntime(workflow.RuntimeOptions{MaxConcurrency: 8})
	run, err := rt.Execute(context.Background(), wf, map[string]any{"customer": "c-1"})
	if err != nil {
		panic(err)
	}
	done, _ := run.Result("done")
	fmt.Println(done)
	for _, n := range run.Trace.Nodes {
		fmt.Println(n.Node, n.Outcome)
	}
	// Output:
	// review order 17
	// fetch ok
	// route ok
	// review ok
	// ship skipped
	// done ok
}
