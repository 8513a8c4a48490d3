package workflow

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
)

// Branch is the output of a switch: the branch taken and the switch's inputs,
// which flow on along that branch. A connection from a switch names the
// branch first: output "high.order" of a switch is input "order" when branch
// "high" is taken; on any other branch the connection carries nothing and
// its target is skipped.
type Branch struct {
	Name  string         `json:"branch"`
	Value map[string]any `json:"value"`
}

// Lookup resolves the taken branch's name to the switch's inputs.
func (b Branch) Lookup(key string) (any, bool) {
	if key == b.Name {
		return b.Value, true
	}
	return nil, false
}

func (b Branch) annotate(t *NodeTrace) { t.Branch = b.Name }

// brancher is implemented by switch nodes, whose outgoing connections name
// a branch.
type brancher interface {
	branchNames() []string
}

// merger is implemented by nodes that run when some of their inputs come
// from skipped nodes.
type merger interface {
	tolerateSkipped()
}

// Switch returns a node that routes to one of branches: choose returns the
// branch to take. Nodes connected to the other branches are skipped (not
// failed), and so are the nodes that depend only on them; a Merge joins the
// branches again. Returning an undeclared branch fails the switch.
func Switch(choose func(ctx context.Context, in Inputs) (string, error), branches ...string) Node {
	return &switchNode{choose: choose, branches: branches}
}

// SwitchOn returns a switch on the value of input: cases maps a value
// (formatted with fmt.Sprint, so 3 and "3" are one case) to a branch;
// otherwise is the branch for any other value, or "" to fail on one. A
// missing input counts as the value "<nil>".
func SwitchOn(input string, cases map[string]string, otherwise string) Node {
	var branches []string
	for _, b := range cases {
		if !slices.Contains(branches, b) {
			branches = append(branches, b)
		}
	}
	if otherwise != "" && !slices.Contains(branches, otherwise) {
		branches = append(branches, otherwise)
	}
	sort.Strings(branches)
	return &switchNode{branches: branches, choose: func(_ context.Context, in Inputs) (string, error) {
		v := fmt.Sprint(in.Value(input))
		if b, ok := cases[v]; ok {
			return b, nil
		}
		if otherwise == "" {
			return "", fmt.Errorf("switch on %s: no case for %q", input, v)
		}
		return otherwise, nil
	}}
}

type switchNode struct {
	choose   func(ctx context.Context, in Inputs) (string, error)
	branches []string
}

func (s *switchNode) Kind() string          { return "switch" }
func (s *switchNode) branchNames() []string { return s.branches }

func (s *switchNode) Validate() error {
	if s.choose == nil {
		return errors.New("switch: nil choose function")
	}
	if len(s.branches) == 0 {
		return errors.New("switch: no branches")
	}
	for i, b := range s.branches {
		if b == "" {
			return errors.New("switch: empty branch name")
		}
		if slices.Contains(s.branches[:i], b) {
			return fmt.Errorf("switch: branch %q declared twice", b)
		}
	}
	return nil
}

func (s *switchNode) Run(ctx context.Context, in Inputs) (any, error) {
	b, err := s.choose(ctx, in)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(s.branches, b) {
		return nil, fmt.Errorf("switch chose branch %q, which is not one of %v", b, s.branches)
	}
	return Branch{Name: b, Value: in.Map()}, nil
}

// MergeMode is how Merge combines its inputs.
type MergeMode int

// Merge modes. All of them take the present inputs in the order their
// connections were declared and leave out inputs from skipped nodes.
const (
	// MergeFirst outputs the first present input: after a switch, the
	// output of whichever branch ran.
	MergeFirst MergeMode = iota
	// MergeMap outputs a map[string]any from input name to value.
	MergeMap
	// MergeList outputs the values as a []any.
	MergeList
	// MergeConcat outputs the elements of the values, which must be lists,
	// as one []any.
	MergeConcat
)

// Merge returns a node that combines the outputs of several upstream nodes
// and tolerates skipped ones: it runs when at least one input is present and
// is skipped only when all are. A failed upstream node still fails it as an
// upstream failure.
func Merge(mode MergeMode) Node { return &mergeNode{mode: mode} }

type mergeNode struct{ mode MergeMode }

func (m *mergeNode) Kind() string     { return "merge" }
func (m *mergeNode) tolerateSkipped() {}

func (m *mergeNode) Validate() error {
	if m.mode < MergeFirst || m.mode > MergeConcat {
		return fmt.Errorf("merge: unknown mode %d", m.mode)
	}
	return nil
}

func (m *mergeNode) Run(_ context.Context, in Inputs) (any, error) {
	switch m.mode {
	case MergeFirst:
		for _, v := range in.All() {
			return v, nil
		}
		return nil, fmt.Errorf("merge: %w: no input present", ErrMissingInput)
	case MergeMap:
		return in.Map(), nil
	case MergeList:
		var out []any
		for _, v := range in.All() {
			out = append(out, v)
		}
		return out, nil
	default:
		var out []any
		for name, v := range in.All() {
			list, err := toList(v)
			if err != nil {
				return nil, fmt.Errorf("merge: input %q: %w", name, err)
			}
			out = append(out, list...)
		}
		return out, nil
	}
}

// toList returns v's elements when v is a list.
func toList(v any) ([]any, error) {
	switch x := v.(type) {
	case []any:
		return x, nil
	case []map[string]any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = x[i]
		}
		return out, nil
	case *MapResult:
		return x.Results, nil
	case nil:
		return nil, fmt.Errorf("%w: nil, want a list", ErrInputType)
	}
	rv := reflect.ValueOf(v)
	if k := rv.Kind(); k != reflect.Slice && k != reflect.Array {
		return nil, fmt.Errorf("%w: %T, want a list", ErrInputType, v)
	}
	out := make([]any, rv.Len())
	for i := range out {
		out[i] = rv.Index(i).Interface()
	}
	return out, nil
}
