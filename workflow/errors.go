package workflow

import (
	"errors"
	"fmt"
	"strings"
)

// Problems Build reports. Each is wrapped with the node, connection or cycle
// it concerns; Build joins all of them with errors.Join.
var (
	// ErrInvalidWorkflow is a problem with no sentinel of its own: an empty
	// name or ID, a nil node, a bad option, a bad cycle setting.
	ErrInvalidWorkflow = errors.New("invalid workflow")
	// ErrUnknownNode is a connection, dependency or cycle that names a node
	// that was not added.
	ErrUnknownNode = errors.New("unknown node")
	// ErrDuplicateNode is a second node with an ID already in use.
	ErrDuplicateNode = errors.New("duplicate node ID")
	// ErrDuplicateInput is a second connection or parameter binding to an
	// input that is already bound.
	ErrDuplicateInput = errors.New("input bound twice")
	// ErrUndeclaredCycle is a loop among connections and dependencies that
	// was not declared with Builder.Cycle.
	ErrUndeclaredCycle = errors.New("undeclared cycle")
	// ErrNotACycle is a declared cycle whose back-edge closes no loop: its
	// target does not lead to its source.
	ErrNotACycle = errors.New("declared cycle is not a cycle")
	// ErrUnknownBranch is a connection from a switch whose output path does
	// not start with one of the switch's branches.
	ErrUnknownBranch = errors.New("unknown switch branch")
)

// Errors of a run.
var (
	// ErrMissingParam is returned by Runtime.Execute, before anything runs,
	// when a parameter that an input is bound to was not passed.
	ErrMissingParam = errors.New("missing run parameter")
	// ErrMissingInput is an input a node needs that is not bound or whose
	// upstream node was skipped.
	ErrMissingInput = errors.New("missing input")
	// ErrInputType is an input of another type than the node needs.
	ErrInputType = errors.New("input has the wrong type")
	// ErrPath is an output path that does not resolve; see PathError.
	ErrPath = errors.New("path does not resolve")
	// ErrTimeout is a node that did not finish within its WithTimeout.
	ErrTimeout = errors.New("node timed out")
	// ErrBreakerOpen is a call refused by an open (or saturated half-open)
	// circuit breaker.
	ErrBreakerOpen = errors.New("circuit breaker open")
	// ErrItemTimeout is a parallel-map item that did not finish within
	// TimeoutPerItem.
	ErrItemTimeout = errors.New("item timed out")
	// ErrNotConverged is a cycle that reached MaxIterations without its
	// Converged predicate holding.
	ErrNotConverged = errors.New("cycle did not converge")
	// ErrPanic is a node that panicked; see PanicError.
	ErrPanic = errors.New("node panicked")
)

// NodeError is the failure of one node.
type NodeError struct {
	Node string // node ID
	Err  error
}

func (e *NodeError) Error() string { return "node " + e.Node + ": " + e.Err.Error() }

// Unwrap returns the node's error.
func (e *NodeError) Unwrap() error { return e.Err }

// CycleError is the failure of a declared cycle as a whole.
type CycleError struct {
	Cycle      string // cycle name
	Iterations int    // iterations run
	Err        error  // ErrNotConverged, or why the back-edge did not resolve
}

func (e *CycleError) Error() string {
	return fmt.Sprintf("cycle %s after %d iterations: %v", e.Cycle, e.Iterations, e.Err)
}

// Unwrap returns the cause.
func (e *CycleError) Unwrap() error { return e.Err }

// RunError is the error of a run in which nodes failed or that was
// cancelled. It names every node that failed by itself; nodes that did not
// run because an upstream node failed are only in the trace.
type RunError struct {
	Workflow string
	RunID    string
	// Errs holds a *NodeError per failed node in execution order, a
	// *CycleError per failed cycle, and the context's cause last when the run
	// was cancelled.
	Errs []error
}

func (e *RunError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "workflow %s run %s: ", e.Workflow, e.RunID)
	for i, err := range e.Errs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap returns Errs, so errors.Is and errors.As see each node's error.
func (e *RunError) Unwrap() []error { return e.Errs }

// Nodes returns the IDs of the nodes that failed by themselves.
func (e *RunError) Nodes() []string {
	var ids []string
	for _, err := range e.Errs {
		if ne, ok := err.(*NodeError); ok {
			ids = append(ids, ne.Node)
		}
	}
	return ids
}

// PathError is an output path or parameter path that does not resolve.
type PathError struct {
	Path   string // the whole path
	At     string // the prefix that did resolve
	Reason string
}

func (e *PathError) Error() string {
	if e.At == "" {
		return fmt.Sprintf("path %q: %s", e.Path, e.Reason)
	}
	return fmt.Sprintf("path %q: at %q: %s", e.Path, e.At, e.Reason)
}

// Unwrap returns ErrPath.
func (e *PathError) Unwrap() error { return ErrPath }

// PanicError is a panic in a node, recovered so that one node cannot take
// the process down.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Unwrap returns ErrPanic.
func (e *PanicError) Unwrap() error { return ErrPanic }

// Permanent marks err as not worth retrying: a Retry stops at it whatever
// its Retryable says. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }
