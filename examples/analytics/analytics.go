// Package analytics is kproxy's analytics example in library mode: two
// reads run side by side in one workflow, in-process on a kproxy pool
// cluster. Both are reads, so both go to a caught-up replica; revenue by
// segment (a join and aggregate over the last 30 days of orders) runs every
// time, while the active products of a category are kept in a cache
// (cache-aside) and read from Postgres only on a miss.
package analytics

import (
	"context"
	"time"

	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/workflow"
)

// Run parameters: the products' status and category.
const (
	ParamStatus   = "status"
	ParamCategory = "category"
)

// revenueBySegmentSQL sums the last 30 days of orders per customer
// segment.
const revenueBySegmentSQL = `SELECT s.segment_name,
       COUNT(DISTINCT c.id) AS customers,
       SUM(o.total_amount) AS revenue,
       ROUND(AVG(o.total_amount), 2) AS avg_order_value
FROM orders o
JOIN customers c ON o.customer_id = c.id
JOIN segments s ON c.segment_id = s.id
WHERE o.order_date >= CURRENT_DATE - INTERVAL '30 days'
GROUP BY s.segment_name
ORDER BY revenue DESC`

// activeProductsSQL lists the products of a status and category.
const activeProductsSQL = `SELECT id, name, category, status, price
FROM products WHERE status = $1 AND category = $2 ORDER BY id`

// Options configures the workflow. Zero fields take the defaults.
type Options struct {
	// Cache keeps the products lists, under "analytics:active_products:"
	// and the JSON of [status, category]. Share one across workflows and
	// runs (a workflow.RedisCache across kproxy instances). Default: a
	// LocalCache of the workflow's own.
	Cache workflow.Cache
	// TTL is how long a products list is kept; default 1m.
	TTL time.Duration
}

// Report is the output of the workflow's report node. Its lists hold one
// map per row, column name to value (numeric values as decimal text).
type Report struct {
	RevenueBySegment any `json:"revenue_by_segment"`
	ActiveProducts   any `json:"active_products"`
}

// Workflow returns the analytics workflow on db: nodes
// "revenue_by_segment" and "active_products" (SQLQuery; the latter cached,
// keyed by the run parameters "status" and "category"), and "report" (a
// *Report).
func Workflow(db *pool.DB, o Options) (*workflow.Workflow, error) {
	if o.Cache == nil {
		o.Cache = workflow.NewLocalCache(workflow.LocalCacheOptions{})
	}
	if o.TTL <= 0 {
		o.TTL = time.Minute
	}
	return workflow.New("analytics").
		Add("revenue_by_segment", workflow.SQLQuery(db, revenueBySegmentSQL)).
		Add("active_products", workflow.SQLQuery(db, activeProductsSQL, "status", "category"),
			workflow.WithCache(o.Cache, workflow.KeyFromInputs("analytics:active_products", "status", "category"), o.TTL)).
		Add("report", workflow.Func(report)).
		BindParam("active_products", "status", ParamStatus).
		BindParam("active_products", "category", ParamCategory).
		// "rows" resolves both in a *SQLResult and in its JSON form, which
		// is what a Redis cache gives back.
		Connect("revenue_by_segment", "rows", "report", "revenue").
		Connect("active_products", "rows", "report", "products").
		Build()
}

func report(_ context.Context, in workflow.Inputs) (any, error) {
	return &Report{RevenueBySegment: in.Value("revenue"), ActiveProducts: in.Value("products")}, nil
}
