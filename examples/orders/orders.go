// Package orders is kproxy's order-processing example in library mode:
// a workflow that fetches the pending orders and processes them twenty at
// a time, each in a transaction of its own on the primary, through the
// same pools, router and server statements a kproxy instance would use —
// without a socket hop.
//
// Each order's transaction takes the order (pending → processing), books
// its payment and takes its stock. The take is guarded, so an order is
// processed exactly once even when runs race for it, and an order that
// cannot be processed (not enough stock) is rolled back alone while the
// others go on.
package orders

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/workflow"
)

// ParamLimit is the run parameter that bounds the orders one run fetches.
const ParamLimit = "limit"

// Options configures the workflow. Zero fields take the defaults.
type Options struct {
	// Workers is the number of orders processed at once; default 20.
	Workers int
}

// fetchSQL lists pending orders. It is a read, so it goes to a replica,
// which may lag: an order it still shows as pending although another run
// took it is caught by the transaction's guard.
const fetchSQL = `SELECT id, customer_id, product_id, quantity, total_amount
FROM orders WHERE status = 'pending' ORDER BY id LIMIT $1`

// processSteps returns one order's transaction. The guarded UPDATE locks
// the order and returns its row as it is now, which the later steps use
// rather than what the (possibly stale) fetch saw.
func processSteps() []workflow.SQLStep {
	return []workflow.SQLStep{
		{
			SQL: `UPDATE orders SET status = 'processing' WHERE id = $1 AND status = 'pending'
RETURNING id, product_id, quantity, total_amount`,
			Args:       []string{"item.id"},
			ExpectRows: workflow.Rows(1), // 0: another run took it
		},
		{
			SQL:        `INSERT INTO payments (order_id, amount, status) VALUES ($1, $2, 'pending') RETURNING id`,
			Args:       []string{"steps.0.row.id", "steps.0.row.total_amount"},
			ExpectRows: workflow.Rows(1),
		},
		{
			SQL:        `UPDATE inventory SET quantity = quantity - $1 WHERE product_id = $2 AND quantity >= $1 RETURNING quantity`,
			Args:       []string{"steps.0.row.quantity", "steps.0.row.product_id"},
			ExpectRows: workflow.Rows(1), // 0: not enough stock
		},
	}
}

// Failure reasons in a Summary.
const (
	// ReasonNotPending: the order was no longer pending; another run, or
	// another process, took it first.
	ReasonNotPending = "not_pending"
	// ReasonInsufficientStock: the order's product has less stock than
	// the order's quantity.
	ReasonInsufficientStock = "insufficient_stock"
	// ReasonError: any other failure (see Failure.Error).
	ReasonError = "error"
)

// Summary is the output of the workflow's summary node.
type Summary struct {
	// Fetched counts the orders the run saw as pending.
	Fetched int `json:"fetched"`
	// Processed counts the orders the run processed.
	Processed int `json:"processed"`
	// Amount is the sum of the processed orders' totals, as a decimal.
	Amount string `json:"amount"`
	// Failed lists the orders the run did not process, in order.
	Failed []Failure `json:"failed"`
}

// Failure is an order the run did not process; its transaction was rolled
// back.
type Failure struct {
	OrderID int64  `json:"order_id"`
	Reason  string `json:"reason"`
	Error   string `json:"error"`
}

// Workflow returns the order-processing workflow on db: nodes "fetch"
// (SQLQuery, the pending orders, at most the run parameter "limit"),
// "process" (a parallel map of one SQLTx per order, with ContinueOnError)
// and "summary" (a *Summary). A run never fails because of one order;
// the summary lists the orders that were not processed and why.
func Workflow(db *pool.DB, o Options) (*workflow.Workflow, error) {
	if o.Workers <= 0 {
		o.Workers = 20
	}
	return workflow.New("order-processing").
		Add("fetch", workflow.SQLQuery(db, fetchSQL, "limit")).
		Add("process", workflow.Map(workflow.SQLTx(db, processSteps()...),
			workflow.MapOptions{MaxWorkers: o.Workers, ContinueOnError: true})).
		Add("summary", workflow.Func(summarize)).
		BindParam("fetch", "limit", ParamLimit).
		Connect("fetch", "rows", "process", "items").
		Connect("fetch", "rows", "summary", "orders").
		Connect("process", "", "summary", "results").
		Build()
}

// summarize sums up the map's results against the fetched orders.
func summarize(_ context.Context, in workflow.Inputs) (any, error) {
	orders, err := workflow.Input[[]map[string]any](in, "orders")
	if err != nil {
		return nil, err
	}
	results, err := workflow.Input[*workflow.MapResult](in, "results")
	if err != nil {
		return nil, err
	}
	s := &Summary{Fetched: len(orders), Failed: []Failure{}}
	amount := new(big.Rat)
	for _, r := range results.Results {
		if r == nil {
			continue
		}
		s.Processed++
		v, err := workflow.Lookup(r, "steps.0.row.total_amount")
		if err != nil {
			return nil, err
		}
		text, _ := v.(string) // numeric decodes as its text
		x, ok := new(big.Rat).SetString(text)
		if !ok {
			return nil, fmt.Errorf("order total %q is not a number", text)
		}
		amount.Add(amount, x)
	}
	s.Amount = amount.FloatString(2)
	for _, e := range results.Errors {
		id, _ := orders[e.Index]["id"].(int64)
		s.Failed = append(s.Failed, Failure{OrderID: id, Reason: reason(e.Err), Error: e.Err.Error()})
	}
	return s, nil
}

// reason classifies a failed order by the step whose row count was off:
// the transaction's errors name the statement ("statement 2: …").
func reason(err error) string {
	if !errors.Is(err, workflow.ErrUnexpectedRows) {
		return ReasonError
	}
	switch msg := err.Error(); {
	case strings.HasPrefix(msg, "statement 0:"):
		return ReasonNotPending
	case strings.HasPrefix(msg, "statement 2:"):
		return ReasonInsufficientStock
	}
	return ReasonError
}
