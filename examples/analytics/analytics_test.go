package analytics_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/examples"
	"github.com/kproxy/kproxy/examples/analytics"
	"github.com/kproxy/kproxy/examples/internal/shoptest"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/workflow"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// database is this package's shop on the test cluster.
const database = "wfex_analytics"

// openShop returns the shop with the examples' seed data.
func openShop(t *testing.T) *shoptest.Shop {
	t.Helper()
	shop := shoptest.Open(t, database, 8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, examples.Setup(ctx, shop.DB))
	return shop
}

var params = map[string]any{analytics.ParamStatus: "active", analytics.ParamCategory: "electronics"}

func execute(t *testing.T, rt *workflow.Runtime, wf *workflow.Workflow) *workflow.Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, err := rt.Execute(ctx, wf, params)
	require.NoError(t, err)
	return run
}

func outcome(t *testing.T, run *workflow.Run, id string) workflow.Outcome {
	t.Helper()
	for _, n := range run.Trace.Nodes {
		if n.Node == id {
			return n.Outcome
		}
	}
	t.Fatalf("no trace for node %s", id)
	return ""
}

func TestRevenueBySegmentIsTheGroupByOfTheLast30DaysReadOnTheReplica(t *testing.T) {
	shop := openShop(t)
	wf, err := analytics.Workflow(shop.DB, analytics.Options{})
	require.NoError(t, err)
	before := shop.DB.Cluster().RoutingStats()
	run := execute(t, workflow.NewRuntime(workflow.RuntimeOptions{}), wf)
	after := shop.DB.Cluster().RoutingStats()
	assert.Equal(t, before.RoutedPrimary, after.RoutedPrimary, "a run without writes reads only on the replica")
	assert.Equal(t, before.RoutedReplica+2, after.RoutedReplica)

	rows, err := run.Lookup("revenue_by_segment", "rows")
	require.NoError(t, err)
	var got []string
	for _, r := range rows.([]map[string]any) {
		got = append(got, fmt.Sprintf("%v %v %v %v", r["segment_name"], r["customers"], r["revenue"], r["avg_order_value"]))
	}
	want := shop.Text(t, `SELECT string_agg(concat_ws(' ', segment_name, customers, revenue, avg), ',' ORDER BY revenue DESC) FROM (
  SELECT s.segment_name, count(DISTINCT c.id) AS customers, sum(o.total_amount) AS revenue, round(avg(o.total_amount), 2) AS avg
  FROM segments s JOIN customers c ON c.segment_id = s.id JOIN orders o ON o.customer_id = c.id
  WHERE o.order_date > CURRENT_DATE - 31 GROUP BY s.segment_name) AS x`)
	assert.Equal(t, want, strings.Join(got, ","))
	assert.Len(t, got, 4, "every segment has orders in the seed")
}

func TestSecondRunTakesActiveProductsFromTheCache(t *testing.T) {
	shop := openShop(t)
	redisClient := redis.NewClient(&redis.Options{Addr: pgtest.Get().RedisAddr})
	t.Cleanup(func() { require.NoError(t, redisClient.Close()) })
	tests := []struct {
		name  string
		cache workflow.Cache
	}{
		{"in-process LRU", workflow.NewLocalCache(workflow.LocalCacheOptions{})},
		{"Redis", workflow.NewRedisCache(redisClient, fmt.Sprintf("wfex:%d:", time.Now().UnixNano()))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shop.Exec(t, `UPDATE products SET name = 'Electronics item 4' WHERE id = 4`)
			wf, err := analytics.Workflow(shop.DB, analytics.Options{Cache: tt.cache, TTL: time.Minute})
			require.NoError(t, err)
			rt := workflow.NewRuntime(workflow.RuntimeOptions{})

			first := execute(t, rt, wf)
			assert.Equal(t, workflow.OutcomeOK, outcome(t, first, "active_products"))
			// Changed behind the cache's back: only a cache hit still shows
			// the old name.
			shop.Exec(t, `UPDATE products SET name = 'renamed' WHERE id = 4`)
			second := execute(t, rt, wf)
			assert.Equal(t, workflow.OutcomeCached, outcome(t, second, "active_products"))
			assert.Equal(t, workflow.OutcomeOK, outcome(t, second, "revenue_by_segment"), "revenue is not cached")

			for i, run := range []*workflow.Run{first, second} {
				name, err := run.Lookup("report", "active_products.0.name")
				require.NoError(t, err, "run %d", i)
				assert.Equal(t, "Electronics item 4", name, "run %d", i)
				products, err := run.Lookup("report", "active_products")
				require.NoError(t, err)
				list, ok := products.([]any) // from Redis, JSON decoded
				if !ok {
					for _, p := range products.([]map[string]any) {
						list = append(list, p)
					}
				}
				var ids []string
				for _, p := range list {
					ids = append(ids, fmt.Sprint(p.(map[string]any)["id"]))
				}
				assert.Equal(t, []string{"4", "8", "16", "20", "28", "32", "40", "44"}, ids,
					"run %d: active electronics (every fourth product, less every sixth)", i)
			}
		})
	}
}
