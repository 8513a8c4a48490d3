package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MapOptions configures a parallel map. Zero fields take the defaults.
type MapOptions struct {
	// Items is the input holding the list of items; default "items".
	Items string
	// MaxWorkers is the number of items processed at once; default 10.
	MaxWorkers int
	// BatchSize splits the items into consecutive batches of this size; a
	// batch starts when the previous one has finished, which bounds how
	// far ahead the map gets of a slow item. Default 0: one batch.
	BatchSize int
	// TimeoutPerItem cancels an item's context after this long; an item
	// that has not finished by then fails with ErrItemTimeout, even if its
	// body returns a value late. Default 0: no limit.
	TimeoutPerItem time.Duration
	// ContinueOnError lets the map succeed when items fail: their errors
	// are in MapResult.Errors and their results are nil. By default the
	// first failure cancels the other items and fails the map with an
	// *ItemError.
	ContinueOnError bool
}

// Map returns a node that calls body once per item of its Items input, up
// to MaxWorkers at a time. The body's inputs are "item" (the item), "index"
// (its position, an int) and the map node's other inputs; its Inputs.Node is
// the map node's ID. The output is a *MapResult with the results in item
// order. Map's workers are its own: they do not count against the
// runtime's MaxConcurrency.
func Map(body Node, o MapOptions) Node {
	if o.Items == "" {
		o.Items = "items"
	}
	if o.MaxWorkers <= 0 {
		o.MaxWorkers = 10
	}
	return &mapNode{body: body, o: o}
}

// MapResult is the output of a parallel map.
type MapResult struct {
	// Results holds each item's output in item order; nil for failed items.
	Results []any `json:"results"`
	// Errors holds the failed items' errors in item order (with
	// ContinueOnError).
	Errors []*ItemError `json:"errors,omitempty"`
}

// Lookup resolves "results", "errors", and an index into Results.
func (m *MapResult) Lookup(key string) (any, bool) {
	switch key {
	case "results":
		return m.Results, true
	case "errors":
		return m.Errors, true
	}
	if i, err := strconv.Atoi(key); err == nil && i >= 0 && i < len(m.Results) {
		return m.Results[i], true
	}
	return nil, false
}

// annotate records the item counts, and the rows when the items report some.
func (m *MapResult) annotate(t *NodeTrace) {
	t.Items = len(m.Results)
	t.ItemErrors = len(m.Errors)
	var rows int64
	counted := false
	for _, r := range m.Results {
		if rc, ok := r.(RowCounter); ok {
			rows += rc.RowCount()
			counted = true
		}
	}
	if counted {
		t.Rows = &rows
	}
}

// ItemError is the failure of one item of a parallel map.
type ItemError struct {
	Index int
	Err   error
}

func (e *ItemError) Error() string { return fmt.Sprintf("item %d: %v", e.Index, e.Err) }

// Unwrap returns the item's error.
func (e *ItemError) Unwrap() error { return e.Err }

// MarshalJSON encodes the error as {"index": …, "error": "…"}.
func (e *ItemError) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Index int    `json:"index"`
		Error string `json:"error"`
	}{e.Index, e.Err.Error()})
}

type mapNode struct {
	body Node
	o    MapOptions
}

func (m *mapNode) Kind() string { return "map" }

func (m *mapNode) Validate() error {
	switch {
	case m.body == nil:
		return errors.New("map: nil body")
	case m.o.BatchSize < 0:
		return fmt.Errorf("map: negative BatchSize %d", m.o.BatchSize)
	case m.o.TimeoutPerItem < 0:
		return fmt.Errorf("map: negative TimeoutPerItem %v", m.o.TimeoutPerItem)
	}
	if v, ok := m.body.(Validator); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("map body: %w", err)
		}
	}
	return nil
}

// mapCall is one run of a map node.
type mapCall struct {
	m       *mapNode
	in      Inputs
	names   []string // "item", "index", then the map's other inputs
	shared  []any    // values of the map's other inputs
	items   []any
	results []any
	errs    []error // per item
}

func (m *mapNode) Run(ctx context.Context, in Inputs) (any, error) {
	raw, ok := in.Get(m.o.Items)
	if !ok {
		return nil, fmt.Errorf("map: %w %q", ErrMissingInput, m.o.Items)
	}
	items, err := toList(raw)
	if err != nil {
		return nil, fmt.Errorf("map: input %q: %w", m.o.Items, err)
	}
	c := &mapCall{m: m, in: in, items: items, results: make([]any, len(items)), errs: make([]error, len(items))}
	c.names = append(c.names, "item", "index")
	for name, v := range in.All() {
		if name != m.o.Items {
			c.names = append(c.names, name)
			c.shared = append(c.shared, v)
		}
	}
	batch := m.o.BatchSize
	if batch <= 0 || batch > len(items) {
		batch = len(items)
	}
	for lo := 0; lo < len(items); lo += batch {
		if err := c.batch(ctx, lo, min(lo+batch, len(items))); err != nil {
			return nil, err
		}
	}
	res := &MapResult{Results: c.results}
	for i, err := range c.errs {
		if err != nil {
			res.Errors = append(res.Errors, &ItemError{Index: i, Err: err})
		}
	}
	return res, nil
}

// batch runs items [lo, hi) on up to MaxWorkers goroutines and waits for
// them. Without ContinueOnError it returns the first item failure.
func (c *mapCall) batch(ctx context.Context, lo, hi int) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next    atomic.Int64
		first   atomic.Pointer[ItemError]
		workers = min(c.m.o.MaxWorkers, hi-lo)
		wg      sync.WaitGroup
	)
	next.Store(int64(lo))
	work := func() {
		for ctx.Err() == nil {
			i := int(next.Add(1) - 1)
			if i >= hi {
				return
			}
			out, err := c.item(ctx, i)
			c.results[i] = out
			c.errs[i] = err
			if err != nil && !c.m.o.ContinueOnError && ctx.Err() == nil {
				ie := &ItemError{Index: i, Err: err}
				if first.CompareAndSwap(nil, ie) {
					cancel(ie)
				}
			}
		}
	}
	for range workers - 1 {
		wg.Go(work)
	}
	work() // this goroutine is a worker too: one worker starts no goroutine
	wg.Wait()
	if ie := first.Load(); ie != nil {
		return ie
	}
	if err := context.Cause(ctx); err != nil {
		// The run's context, not an item, ended the batch.
		return err
	}
	return nil
}

// item runs the body on item i.
func (c *mapCall) item(ctx context.Context, i int) (any, error) {
	vals := make([]any, len(c.names))
	vals[0], vals[1] = c.items[i], i
	copy(vals[2:], c.shared)
	in := Inputs{names: c.names, values: vals, node: c.in.node, run: c.in.run}
	if c.m.o.TimeoutPerItem <= 0 {
		return safeRun(ctx, c.m.body, in)
	}
	ictx, cancel := context.WithTimeout(ctx, c.m.o.TimeoutPerItem)
	defer cancel()
	out, err := safeRun(ictx, c.m.body, in)
	if ctx.Err() == nil && errors.Is(ictx.Err(), context.DeadlineExceeded) {
		if err == nil {
			return nil, fmt.Errorf("%w after %v", ErrItemTimeout, c.m.o.TimeoutPerItem)
		}
		return nil, fmt.Errorf("%w after %v: %w", ErrItemTimeout, c.m.o.TimeoutPerItem, err)
	}
	return out, err
}
