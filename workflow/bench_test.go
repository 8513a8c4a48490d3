package workflow_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kproxy/kproxy/workflow"
)

// BenchmarkChainOfNoopNodes measures the runtime's own cost per node: each
// node takes the previous one's output and does nothing.
func BenchmarkChainOfNoopNodes(b *testing.B) {
	pass := workflow.Func(func(_ context.Context, in workflow.Inputs) (any, error) { return in.Value("in"), nil })
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			wb := workflow.New("chain").Add("n0", pass).BindParam("n0", "in", "x")
			for i := 1; i < n; i++ {
				wb.Add(fmt.Sprintf("n%d", i), pass).Connect(fmt.Sprintf("n%d", i-1), "", fmt.Sprintf("n%d", i), "in")
			}
			wf := build(b, wb)
			rt := workflow.NewRuntime(workflow.RuntimeOptions{})
			ctx := context.Background()
			params := map[string]any{"x": 1}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rt.Execute(ctx, wf, params); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/node")
		})
	}
}

// BenchmarkFanOutOfNoopNodes measures the cost of handing independent nodes
// to other goroutines: one root, n nodes that depend only on it, one merge.
func BenchmarkFanOutOfNoopNodes(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			wb := workflow.New("fan").Add("root", noop).Add("join", workflow.Merge(workflow.MergeList))
			for i := range n {
				id := fmt.Sprintf("n%d", i)
				wb.Add(id, noop).Connect("root", "", id, "in").Connect(id, "", "join", id)
			}
			wf := build(b, wb)
			rt := workflow.NewRuntime(workflow.RuntimeOptions{})
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rt.Execute(ctx, wf, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*(n+2)), "ns/node")
		})
	}
}

// BenchmarkParallelMap maps 1,000 items that each take 5 ms (an I/O wait)
// with 1 and 20 workers.
func BenchmarkParallelMap(b *testing.B) {
	const items = 1000
	list := make([]any, items)
	for i := range list {
		list[i] = i
	}
	sleep := workflow.Func(func(context.Context, workflow.Inputs) (any, error) {
		time.Sleep(5 * time.Millisecond)
		return nil, nil
	})
	for _, workers := range []int{1, 20} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			wf := build(b, workflow.New("map").
				Add("m", workflow.Map(sleep, workflow.MapOptions{MaxWorkers: workers})).
				BindParam("m", "items", "items"))
			rt := workflow.NewRuntime(workflow.RuntimeOptions{})
			params := map[string]any{"items": list}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rt.Execute(context.Background(), wf, params); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*items)/b.Elapsed().Seconds(), "items/s")
		})
	}
}
