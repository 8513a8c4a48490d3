package workflow

import "slices"

// Workflow is a built, validated workflow: its nodes in execution order,
// with their input bindings resolved to node indexes and pre-split paths.
// It is immutable and safe to run concurrently any number of times.
type Workflow struct {
	name   string
	nodes  []nodeSpec // in execution order: a node comes after what it depends on
	byID   map[string]int32
	units  []unitSpec // scheduling units in execution order
	roots  []int32    // units that depend on nothing
	cycles []cycleSpec
	params []string // top-level parameters inputs are bound to, sorted
	bufLen int      // total inputs: the size of a run's input buffer
}

// Sources of an input other than a node.
const (
	srcParam = -1 // a run parameter
	srcBack  = -2 // a cycle's back-edge only
)

type nodeSpec struct {
	id        string
	kind      string
	node      Node
	policy    *policy // nil when the node has no options
	inputs    []inputSpec
	names     []string // inputs' names, for Inputs
	after     []int32  // ordering-only dependencies
	merge     bool     // runs when some inputs are skipped
	backInput int      // index in inputs a cycle's back-edge feeds, or -1
	off       int      // offset of the node's inputs in a run's input buffer
}

type inputSpec struct {
	name   string
	src    int32  // node index, srcParam or srcBack
	param  string // parameter name when src is srcParam
	path   []segment
	branch string // branch of the source switch, or ""
}

// unitSpec is what the scheduler runs: one node, or a cycle's whole body.
type unitSpec struct {
	nodes []int32 // in execution order
	next  []int32 // units that depend on this one
	deps  int32   // number of units this one depends on
	cycle int32   // cycle index, or -1
}

type cycleSpec struct {
	name      string
	from, to  int32
	path      []segment
	branch    string
	max       int
	converged func(iteration int, outputs map[string]any) bool
	accept    bool
	body      []int32 // in execution order
}

// Name returns the workflow's name.
func (w *Workflow) Name() string { return w.name }

// Nodes returns the node IDs in execution order.
func (w *Workflow) Nodes() []string {
	ids := make([]string, len(w.nodes))
	for i := range w.nodes {
		ids[i] = w.nodes[i].id
	}
	return ids
}

// Params returns the names of the run parameters that inputs are bound to,
// sorted; Runtime.Execute requires each of them.
func (w *Workflow) Params() []string { return slices.Clone(w.params) }
