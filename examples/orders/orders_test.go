package orders_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/examples"
	"github.com/kproxy/kproxy/examples/internal/shoptest"
	"github.com/kproxy/kproxy/examples/orders"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/workflow"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// database is this package's shop on the test cluster.
const database = "wfex_orders"

// stock is what each product of seedSQL has in stock.
const stock = 10000

// seedSQL empties the shop and fills it with 20 products, each with stock
// in stock, and n pending orders (ids 1 to n) of 1 to 4 items.
func seedSQL(n int) string {
	return fmt.Sprintf(`
TRUNCATE payments, orders, inventory, products, customers, segments RESTART IDENTITY;
INSERT INTO segments VALUES (1, 'retail');
INSERT INTO customers (id, name, email, segment_id)
SELECT i, 'c' || i, 'c' || i || '@example.com', 1 FROM generate_series(1, 50) AS i;
INSERT INTO products (id, name, category, status, price)
SELECT i, 'p' || i, 'toys', 'active', 2.25 + i FROM generate_series(1, 20) AS i;
INSERT INTO inventory SELECT id, %d FROM products;
INSERT INTO orders (id, customer_id, product_id, quantity, total_amount)
SELECT i, 1 + i %% 50, p.id, 1 + i %% 4, (1 + i %% 4) * p.price
FROM generate_series(1, %d) AS i JOIN products AS p ON p.id = 1 + i %% 20;`, stock, n)
}

// runWorkflow runs the order-processing workflow once and returns its
// summary.
func runWorkflow(ctx context.Context, rt *workflow.Runtime, wf *workflow.Workflow) (*orders.Summary, *workflow.Run, error) {
	run, err := rt.Execute(ctx, wf, map[string]any{orders.ParamLimit: 10000})
	if err != nil {
		return nil, run, err
	}
	s, ok := run.Result("summary")
	if !ok {
		return nil, run, fmt.Errorf("no summary")
	}
	return s.(*orders.Summary), run, nil
}

// checkProcessed checks that exactly the orders other than the except
// ones are processing, each with one payment of its total, and that each
// product's stock went down by exactly the processed orders' quantities.
func checkProcessed(t *testing.T, shop *shoptest.Shop, orderCount int, except ...int64) {
	t.Helper()
	want := int64(orderCount - len(except))
	assert.Equal(t, want, shop.Int(t, `SELECT count(*) FROM orders WHERE status = 'processing'`))
	assert.Equal(t, int64(len(except)), shop.Int(t, `SELECT count(*) FROM orders WHERE status = 'pending'`))
	assert.Equal(t, want, shop.Int(t, `SELECT count(*) FROM payments`))
	assert.Equal(t, want, shop.Int(t, `SELECT count(*) FROM payments AS p JOIN orders AS o ON o.id = p.order_id
WHERE o.status = 'processing' AND p.amount = o.total_amount AND p.status = 'pending'`),
		"one payment of the order's total per processed order")
	assert.Equal(t,
		shop.Text(t, `SELECT coalesce(sum(total_amount), 0)::text FROM orders WHERE status = 'processing'`),
		shop.Text(t, `SELECT coalesce(sum(amount), 0)::text FROM payments`),
		"payments add up to the processed orders' totals")
	assert.Zero(t, shop.Int(t, `SELECT count(*) FROM inventory AS i WHERE i.product_id <= 20 AND i.quantity <> $1::int
  - (SELECT coalesce(sum(o.quantity), 0) FROM orders AS o WHERE o.product_id = i.product_id AND o.status = 'processing')`, stock),
		"stock went down by exactly the processed quantities")
	for _, id := range except {
		assert.Equal(t, "pending", shop.Text(t, `SELECT status FROM orders WHERE id = $1`, id), "order %d", id)
		assert.Zero(t, shop.Int(t, `SELECT count(*) FROM payments WHERE order_id = $1`, id), "order %d has no payment", id)
	}
}

func TestRacingRunsProcessEveryOrderExactlyOnce(t *testing.T) {
	const orderCount, runs = 500, 3
	shop := shoptest.Open(t, database, 30)
	shop.Exec(t, seedSQL(orderCount))
	wf, err := orders.Workflow(shop.DB, orders.Options{Workers: 20})
	require.NoError(t, err)
	rt := workflow.NewRuntime(workflow.RuntimeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	summaries := make([]*orders.Summary, runs)
	errs := make([]error, runs)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range runs {
		wg.Go(func() {
			<-start
			summaries[i], _, errs[i] = runWorkflow(ctx, rt, wf)
		})
	}
	close(start)
	wg.Wait()

	processed, taken := 0, 0
	for i, s := range summaries {
		require.NoError(t, errs[i], "run %d", i)
		assert.Equal(t, s.Fetched, s.Processed+len(s.Failed), "run %d: every fetched order is processed or failed", i)
		for _, f := range s.Failed {
			assert.Equal(t, orders.ReasonNotPending, f.Reason, "run %d: order %d: %s", i, f.OrderID, f.Error)
		}
		processed += s.Processed
		taken += len(s.Failed)
		t.Logf("run %d: fetched %d, processed %d, taken by another run %d", i, s.Fetched, s.Processed, len(s.Failed))
	}
	assert.Equal(t, orderCount, processed, "the runs processed each order once between them")
	checkProcessed(t, shop, orderCount)
}

func TestOrderWithInsufficientStockRollsBackAloneWhileTheOthersSucceed(t *testing.T) {
	const orderCount = 500
	const planted = orderCount + 1
	shop := shoptest.Open(t, database, 30)
	shop.Exec(t, seedSQL(orderCount)+fmt.Sprintf(`
INSERT INTO products (id, name, category, status, price) VALUES (21, 'scarce', 'toys', 'active', 10);
INSERT INTO inventory VALUES (21, 1);
INSERT INTO orders (id, customer_id, product_id, quantity, total_amount) VALUES (%d, 1, 21, 5, 50);`, planted))
	wf, err := orders.Workflow(shop.DB, orders.Options{Workers: 20})
	require.NoError(t, err)
	rt := workflow.NewRuntime(workflow.RuntimeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	s, run, err := runWorkflow(ctx, rt, wf)
	require.NoError(t, err, "one failed order does not fail the run")
	assert.Equal(t, orderCount+1, s.Fetched)
	assert.Equal(t, orderCount, s.Processed)
	require.Len(t, s.Failed, 1)
	assert.Equal(t, int64(planted), s.Failed[0].OrderID)
	assert.Equal(t, orders.ReasonInsufficientStock, s.Failed[0].Reason, s.Failed[0].Error)
	assert.Equal(t, shop.Text(t, `SELECT sum(total_amount)::text FROM orders WHERE id <> $1`, planted), s.Amount)

	checkProcessed(t, shop, orderCount+1, planted)
	assert.Equal(t, int64(1), shop.Int(t, `SELECT quantity FROM inventory WHERE product_id = 21`), "the failed order's stock is untouched")

	var process workflow.NodeTrace
	for _, n := range run.Trace.Nodes {
		if n.Node == "process" {
			process = n
		}
	}
	assert.Equal(t, workflow.OutcomeOK, process.Outcome)
	assert.Equal(t, orderCount+1, process.Items)
	assert.Equal(t, 1, process.ItemErrors)
	require.NotNil(t, process.Rows)
	assert.EqualValues(t, 3*orderCount, *process.Rows, "three rows per processed order")
}

func TestSeedDataIsProcessedExceptWhatItsScarceProductCannotCover(t *testing.T) {
	shop := shoptest.Open(t, database, 30)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, examples.Setup(ctx, shop.DB))
	pending := shop.Int(t, `SELECT count(*) FROM orders WHERE status = 'pending'`)
	wf, err := orders.Workflow(shop.DB, orders.Options{})
	require.NoError(t, err)

	s, _, err := runWorkflow(ctx, workflow.NewRuntime(workflow.RuntimeOptions{}), wf)
	require.NoError(t, err)
	assert.EqualValues(t, pending, s.Fetched, "the run sees the whole seed")
	require.NotEmpty(t, s.Failed)
	for _, f := range s.Failed {
		assert.Equal(t, orders.ReasonInsufficientStock, f.Reason, "order %d: %s", f.OrderID, f.Error)
		assert.Equal(t, int64(7), shop.Int(t, `SELECT product_id FROM orders WHERE id = $1`, f.OrderID))
	}
	assert.EqualValues(t, len(s.Failed), shop.Int(t, `SELECT count(*) FROM orders WHERE status = 'pending'`))
	assert.GreaterOrEqual(t, shop.Int(t, `SELECT quantity FROM inventory WHERE product_id = 7`), int64(0))
}
