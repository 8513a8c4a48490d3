// Command order-processing runs kproxy's order-processing example workflow
// once, in-process on a kproxy pool cluster (no proxy), and prints its
// summary, trace and the cluster's routing and pool statistics as JSON.
//
//	go run ./examples/orders/cmd/order-processing -config examples/kproxy.yaml -setup
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kproxy/kproxy/examples"
	"github.com/kproxy/kproxy/examples/orders"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/workflow"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "order-processing:", err)
		os.Exit(1)
	}
}

// output is what the program prints.
type output struct {
	Summary *orders.Summary       `json:"summary"`
	Trace   *workflow.Trace       `json:"trace"`
	Routing pool.RoutingStats     `json:"routing"`
	Pools   []examples.PoolReport `json:"pools"`
	Error   string                `json:"error,omitempty"`
}

func run() error {
	var (
		f       examples.Flags
		limit   = flag.Int("limit", 1000, "process at most this many pending orders")
		workers = flag.Int("workers", 20, "orders processed at once")
		timeout = flag.Duration("timeout", time.Minute, "give up on the run after this long")
	)
	f.Register(flag.CommandLine)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log, err := f.Logger()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	db, err := f.Open(ctx, log)
	if err != nil {
		return err
	}
	defer db.Close()

	wf, err := orders.Workflow(db, orders.Options{Workers: *workers})
	if err != nil {
		return err
	}
	rt := workflow.NewRuntime(workflow.RuntimeOptions{Logger: log})
	rctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	r, runErr := rt.Execute(rctx, wf, map[string]any{orders.ParamLimit: *limit})

	out := output{Routing: db.Cluster().RoutingStats(), Pools: examples.PoolReports(db.Cluster())}
	if r != nil {
		out.Trace = r.Trace
		if s, ok := r.Result("summary"); ok {
			out.Summary = s.(*orders.Summary)
		}
	}
	if runErr != nil {
		out.Error = runErr.Error()
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	return runErr
}
