package workflow

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"math"
	"sync"
)

// Node is one step of a workflow. Run receives the node's bound inputs and
// returns its output, which downstream nodes read whole or by path.
//
// A Node is shared by every run of every workflow it was added to, so Run
// must be safe for concurrent use; per-run state belongs in Run's locals.
// Run must return promptly once ctx is done: the runtime cancels ctx when
// the run is cancelled and when a WithTimeout or TimeoutPerItem expires, and
// it waits for Run to return. The output is handed to downstream nodes as
// is, possibly to several at once: neither the node nor its readers may
// modify it afterwards.
type Node interface {
	Run(ctx context.Context, in Inputs) (any, error)
}

// Func adapts a function to a Node.
type Func func(ctx context.Context, in Inputs) (any, error)

// Run calls f.
func (f Func) Run(ctx context.Context, in Inputs) (any, error) { return f(ctx, in) }

// Kind returns "func".
func (Func) Kind() string { return "func" }

// Kinder is implemented by nodes that name their kind ("func", "switch",
// "http", "sql", …) for the trace. Other nodes show their Go type.
type Kinder interface {
	Kind() string
}

// Validator is implemented by nodes that can check their own settings;
// Builder.Build reports a non-nil Validate error with the node's ID.
type Validator interface {
	Validate() error
}

// RowCounter is implemented by outputs that carry a row count, such as a
// SQL node's result; the trace records it as the node's rows.
type RowCounter interface {
	RowCount() int64
}

// annotator is implemented by the outputs of built-in node kinds that add to
// their node's trace entry.
type annotator interface {
	annotate(t *NodeTrace)
}

// Inputs are the values bound to a node's inputs for one call, in the order
// the bindings were declared, plus the run's parameters.
//
// Inputs and the slices behind it belong to the runtime and are valid only
// until Run returns; the values themselves are upstream outputs and
// parameters, which the node must not modify. An input whose upstream node
// was skipped (seen only by Merge) reads as absent.
type Inputs struct {
	names  []string
	values []any
	node   string
	run    *runInfo
}

// runInfo is what all nodes of one run share.
type runInfo struct {
	id     string
	params map[string]any

	mu     sync.Mutex
	scoped map[any]any // guarded by mu; see Inputs.Scoped
}

// absent is the value of an input that has none: its upstream node was
// skipped, or it is a cycle's back-edge before the first iteration ended.
type absent struct{}

// NewInputs returns Inputs holding values and no parameters, for calling a
// node outside a workflow, for example in its tests.
func NewInputs(values map[string]any) Inputs {
	in := Inputs{names: make([]string, 0, len(values)), values: make([]any, 0, len(values))}
	for k, v := range values {
		in.names = append(in.names, k)
		in.values = append(in.values, v)
	}
	return in
}

// Get returns the named input and whether it is present.
func (in Inputs) Get(name string) (any, bool) {
	for i, n := range in.names {
		if n == name {
			v := in.values[i]
			if _, missing := v.(absent); missing {
				return nil, false
			}
			return v, true
		}
	}
	return nil, false
}

// Value returns the named input, or nil when it is not present.
func (in Inputs) Value(name string) any {
	v, _ := in.Get(name)
	return v
}

// All yields the present inputs in the order their bindings were declared.
func (in Inputs) All() iter.Seq2[string, any] {
	return func(yield func(string, any) bool) {
		for i, n := range in.names {
			if _, missing := in.values[i].(absent); missing {
				continue
			}
			if !yield(n, in.values[i]) {
				return
			}
		}
	}
}

// Map returns the present inputs in a new map.
func (in Inputs) Map() map[string]any {
	m := make(map[string]any, len(in.names))
	for n, v := range in.All() {
		m[n] = v
	}
	return m
}

// Param returns the named run parameter and whether it was passed.
func (in Inputs) Param(name string) (any, bool) {
	if in.run == nil {
		return nil, false
	}
	v, ok := in.run.params[name]
	return v, ok
}

// Params returns the run's parameters. The map belongs to the caller of
// Execute and must not be modified.
func (in Inputs) Params() map[string]any {
	if in.run == nil {
		return nil
	}
	return in.run.params
}

// Node returns the ID of the node being called, or "" outside a workflow.
func (in Inputs) Node() string { return in.node }

// Scoped returns the value the run holds under key, made by create the
// first time a node of the run asks: state that lives for one run and is
// shared by its nodes (and map items), such as the database session that
// gives a run read-your-writes. Outside a workflow it returns a fresh
// create(). Safe for concurrent use; create runs under a lock, so it must
// be quick.
func (in Inputs) Scoped(key any, create func() any) any {
	if in.run == nil {
		return create()
	}
	r := in.run
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.scoped[key]
	if !ok {
		if r.scoped == nil {
			r.scoped = map[any]any{}
		}
		v = create()
		r.scoped[key] = v
	}
	return v
}

// RunID returns the ID of the run, or "" outside a workflow.
func (in Inputs) RunID() string {
	if in.run == nil {
		return ""
	}
	return in.run.id
}

// Input returns the named input as a T. A missing input is an error wrapping
// ErrMissingInput, a value of another type one wrapping ErrInputType. Numbers
// convert between Go's integer and float types when no precision is lost,
// since values that went through JSON (a Redis cache, an HTTP body) come back
// as float64.
func Input[T any](in Inputs, name string) (T, error) {
	var zero T
	v, ok := in.Get(name)
	if !ok {
		return zero, fmt.Errorf("%w %q", ErrMissingInput, name)
	}
	if t, ok := v.(T); ok {
		return t, nil
	}
	var out T
	if convertNumber(v, &out) {
		return out, nil
	}
	return zero, fmt.Errorf("%w: input %q is %T, want %T", ErrInputType, name, v, zero)
}

// convertNumber stores v in *dst when both are numbers and v fits exactly.
func convertNumber(v any, dst any) bool {
	var (
		i       int64
		isInt   = true
		f       float64
		inRange = true
	)
	switch x := v.(type) {
	case int:
		i = int64(x)
	case int32:
		i = int64(x)
	case int64:
		i = x
	case uint32:
		i = int64(x)
	case uint:
		i, inRange = int64(x), uint64(x) <= math.MaxInt64
	case uint64:
		i, inRange = int64(x), x <= math.MaxInt64
	case float32:
		f, isInt = float64(x), false
	case float64:
		f, isInt = x, false
	case json.Number:
		if n, err := x.Int64(); err == nil {
			i = n
		} else if g, err := x.Float64(); err == nil {
			f, isInt = g, false
		} else {
			return false
		}
	default:
		return false
	}
	if !inRange {
		return false
	}
	if isInt {
		f = float64(i)
	} else {
		// A float converts to an integer only when it is one.
		if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
			inRange = false
		} else {
			i = int64(f)
		}
	}
	switch d := dst.(type) {
	case *float64:
		*d = f
	case *float32:
		*d = float32(f)
	case *int:
		if !inRange || i < math.MinInt || i > math.MaxInt {
			return false
		}
		*d = int(i)
	case *int64:
		if !inRange {
			return false
		}
		*d = i
	case *int32:
		if !inRange || i < math.MinInt32 || i > math.MaxInt32 {
			return false
		}
		*d = int32(i)
	default:
		return false
	}
	return true
}
