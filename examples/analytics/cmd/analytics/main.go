// Command analytics runs kproxy's analytics example workflow twice,
// in-process on a kproxy pool cluster (no proxy), and prints the report,
// both runs' traces (the second shows active_products "cached") and the
// cluster's routing and pool statistics as JSON.
//
//	go run ./examples/analytics/cmd/analytics -config examples/kproxy.yaml -setup
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

	"github.com/redis/go-redis/v9"

	"github.com/kproxy/kproxy/examples"
	"github.com/kproxy/kproxy/examples/analytics"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/workflow"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "analytics:", err)
		os.Exit(1)
	}
}

// output is what the program prints.
type output struct {
	Report  *analytics.Report     `json:"report"`
	Runs    []runOutput           `json:"runs"`
	Routing pool.RoutingStats     `json:"routing"`
	Pools   []examples.PoolReport `json:"pools"`
}

type runOutput struct {
	// ActiveProducts is the active_products node's outcome: "ok" on a
	// cache miss, "cached" on a hit.
	ActiveProducts workflow.Outcome `json:"active_products"`
	Trace          *workflow.Trace  `json:"trace"`
}

func run() error {
	var (
		f         examples.Flags
		redisAddr = flag.String("redis", "", "cache in Redis at `host:port` instead of in-process")
		ttl       = flag.Duration("ttl", time.Minute, "how long a products list stays cached")
		status    = flag.String("status", "active", "products' status")
		category  = flag.String("category", "electronics", "products' category")
		runs      = flag.Int("runs", 2, "how many times to run the workflow")
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

	var cache workflow.Cache = workflow.NewLocalCache(workflow.LocalCacheOptions{})
	if *redisAddr != "" {
		client := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer client.Close()
		cache = workflow.NewRedisCache(client, "kproxy:examples:")
	}
	wf, err := analytics.Workflow(db, analytics.Options{Cache: cache, TTL: *ttl})
	if err != nil {
		return err
	}
	rt := workflow.NewRuntime(workflow.RuntimeOptions{Logger: log})
	params := map[string]any{analytics.ParamStatus: *status, analytics.ParamCategory: *category}

	var out output
	for range *runs {
		r, err := rt.Execute(ctx, wf, params)
		if err != nil {
			return err
		}
		ro := runOutput{Trace: r.Trace}
		for _, n := range r.Trace.Nodes {
			if n.Node == "active_products" {
				ro.ActiveProducts = n.Outcome
			}
		}
		out.Runs = append(out.Runs, ro)
		if out.Report == nil {
			rep, _ := r.Result("report")
			out.Report = rep.(*analytics.Report)
		}
	}
	out.Routing = db.Cluster().RoutingStats()
	out.Pools = examples.PoolReports(db.Cluster())
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
