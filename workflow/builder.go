package workflow

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Builder declares a workflow: its nodes, the connections from outputs to
// inputs, parameter bindings, ordering dependencies and declared cycles.
// Declaration order does not matter (a connection may name a node added
// later); Build checks everything at once. A Builder is not safe for
// concurrent use. Its methods return the Builder so that calls chain.
type Builder struct {
	name     string
	decls    []nodeDecl
	byID     map[string]int
	bindings []bindingDecl
	afters   []afterDecl
	cycles   []cycleDecl
	errs     []error
}

type nodeDecl struct {
	id   string
	node Node
	opts []NodeOption
}

// bindingDecl binds input to of node to, either to an output path of node
// from or to a run parameter path.
type bindingDecl struct {
	from, output string
	param        string
	isParam      bool
	to, input    string
}

func (d bindingDecl) String() string {
	if d.isParam {
		return fmt.Sprintf("bind param %s → %s", d.param, dotted(d.to, d.input))
	}
	return fmt.Sprintf("connect %s → %s", dotted(d.from, d.output), dotted(d.to, d.input))
}

func dotted(node, path string) string {
	if path == "" {
		return node
	}
	return node + "." + path
}

type afterDecl struct{ id, dep string }

type cycleDecl struct {
	name string
	c    Cycle
}

// Cycle declares a loop: the back-edge from output path Output of node From
// to input Input of node To, which must close a loop over the forward
// connections (To leads to From). The cycle's body is every node on a path
// from To to From. The body runs as a unit, its nodes one after another in
// dependency order, once per iteration; nodes outside the body that depend
// on it run once, after the last iteration, and see its last outputs.
//
// In the first iteration To's Input holds whatever it is bound to by a
// connection or parameter (absent when it is bound by the back-edge only);
// in each later one it holds From's Output of the previous iteration.
type Cycle struct {
	From   string // source of the back-edge
	Output string // path in From's output; "" for all of it
	To     string // target of the back-edge: the body's entry
	Input  string // input of To the back-edge feeds

	// MaxIterations bounds the iterations (at least 1).
	MaxIterations int
	// Converged is called after each iteration with its number (from 1) and
	// the outputs of the body's nodes by ID; true ends the cycle. With
	// Converged nil the body runs exactly MaxIterations times.
	Converged func(iteration int, outputs map[string]any) bool
	// AcceptUnconverged makes a cycle that reaches MaxIterations without
	// converging succeed with its last outputs. By default it fails with
	// ErrNotConverged, and so do the nodes that depend on it.
	AcceptUnconverged bool
}

// New returns a Builder for a workflow called name.
func New(name string) *Builder {
	return &Builder{name: name, byID: make(map[string]int)}
}

// Add adds node n under id, with options such as WithRetry.
func (b *Builder) Add(id string, n Node, opts ...NodeOption) *Builder {
	switch _, dup := b.byID[id]; {
	case id == "":
		b.errs = append(b.errs, fmt.Errorf("add node: %w: empty node ID", ErrInvalidWorkflow))
	case dup:
		b.errs = append(b.errs, fmt.Errorf("add node %s: %w", id, ErrDuplicateNode))
	case n == nil:
		b.errs = append(b.errs, fmt.Errorf("add node %s: %w: nil node", id, ErrInvalidWorkflow))
	default:
		b.byID[id] = len(b.decls)
		b.decls = append(b.decls, nodeDecl{id: id, node: n, opts: opts})
	}
	return b
}

// Connect binds input of node to to the value at the dotted path output in
// node from's output ("rows.0.id", "result.rows"; "" for the whole output).
// From a switch the path starts with a branch name ("high.order"); the
// connection carries a value only when that branch is taken.
func (b *Builder) Connect(from, output, to, input string) *Builder {
	b.bindings = append(b.bindings, bindingDecl{from: from, output: output, to: to, input: input})
	return b
}

// BindParam binds input of node to to the run parameter at the dotted path
// param ("order_id", "order.customer.id"). Runtime.Execute refuses to start
// when the parameter is missing.
func (b *Builder) BindParam(to, input, param string) *Builder {
	b.bindings = append(b.bindings, bindingDecl{param: param, isParam: true, to: to, input: input})
	return b
}

// After makes node id wait for deps without taking their outputs. A failed
// dependency fails id as an upstream failure, a skipped one skips it.
func (b *Builder) After(id string, deps ...string) *Builder {
	for _, d := range deps {
		b.afters = append(b.afters, afterDecl{id: id, dep: d})
	}
	return b
}

// Cycle declares the loop c under name; see Cycle.
func (b *Builder) Cycle(name string, c Cycle) *Builder {
	b.cycles = append(b.cycles, cycleDecl{name: name, c: c})
	return b
}

// Build checks the declaration and returns the Workflow, or every problem
// found joined with errors.Join; each wraps one of the ErrX problems above.
// The Workflow is immutable and safe to run concurrently any number of
// times; later changes to the Builder do not affect it.
func (b *Builder) Build() (*Workflow, error) {
	c := compiler{b: b, errs: slices.Clone(b.errs)}
	wf := c.compile()
	if len(c.errs) > 0 {
		return nil, fmt.Errorf("workflow %q: %w", b.name, errors.Join(c.errs...))
	}
	return wf, nil
}

// compiler turns a Builder into a Workflow, collecting problems.
type compiler struct {
	b    *Builder
	errs []error

	pols   []*policy
	inputs [][]inputDecl // per node, in declaration order
	afters [][]int       // per node, ordering dependencies
	succ   [][]int       // forward graph: connections and dependencies
	cycles []cycleInfo
}

type inputDecl struct {
	name   string
	src    int // node, or srcParam
	param  string
	path   []segment
	branch string
}

type cycleInfo struct {
	decl     cycleDecl
	from, to int
	path     []segment
	branch   string
	body     []int
}

func (c *compiler) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

func (c *compiler) compile() *Workflow {
	b := c.b
	if b.name == "" {
		c.fail("%w: empty workflow name", ErrInvalidWorkflow)
	}
	if len(b.decls) == 0 {
		c.fail("%w: no nodes", ErrInvalidWorkflow)
	}
	n := len(b.decls)
	c.pols = make([]*policy, n)
	for i, d := range b.decls {
		if v, ok := d.node.(Validator); ok {
			if err := v.Validate(); err != nil {
				c.fail("node %s: %w: %w", d.id, ErrInvalidWorkflow, err)
			}
		}
		if len(d.opts) > 0 {
			p := &policy{}
			for _, o := range d.opts {
				if o == nil {
					p.errs = append(p.errs, errors.New("nil option"))
					continue
				}
				o(p)
			}
			for _, err := range p.errs {
				c.fail("node %s: %w: %w", d.id, ErrInvalidWorkflow, err)
			}
			c.pols[i] = p
		}
	}
	c.bindInputs()
	c.bindAfters()
	c.graph()
	acyclic := c.checkUndeclaredCycles()
	c.declareCycles(acyclic)
	if len(c.errs) > 0 {
		return nil
	}
	return c.lay()
}

// node returns the index of id, reporting it as unknown if it is not one.
func (c *compiler) node(id, context string) (int, bool) {
	i, ok := c.b.byID[id]
	if !ok {
		c.fail("%s: %w %q", context, ErrUnknownNode, id)
	}
	return i, ok
}

// branchOf checks that path, from node src, starts with a branch when src is
// a switch, and returns the branch and the rest of the path.
func (c *compiler) branchOf(src int, segs []segment, context string) (string, []segment, bool) {
	sw, ok := c.b.decls[src].node.(brancher)
	if !ok {
		return "", segs, true
	}
	names := sw.branchNames()
	if len(segs) == 0 {
		c.fail("%s: %w: a connection from switch %s names a branch first (one of %s)", context, ErrUnknownBranch, c.b.decls[src].id, strings.Join(names, ", "))
		return "", nil, false
	}
	if !slices.Contains(names, segs[0].key) {
		c.fail("%s: %w %q of switch %s (branches: %s)", context, ErrUnknownBranch, segs[0].key, c.b.decls[src].id, strings.Join(names, ", "))
		return "", nil, false
	}
	return segs[0].key, segs[1:], true
}

func (c *compiler) bindInputs() {
	n := len(c.b.decls)
	c.inputs = make([][]inputDecl, n)
	bound := make(map[[2]string]string)
	for _, d := range c.b.bindings {
		desc := d.String()
		to, okTo := c.node(d.to, desc)
		from, okFrom := -1, true
		if !d.isParam {
			from, okFrom = c.node(d.from, desc)
		}
		ok := okTo && okFrom
		if d.input == "" {
			c.fail("%s: %w: empty input name", desc, ErrInvalidWorkflow)
			ok = false
		}
		path := d.output
		if d.isParam {
			path = d.param
			if path == "" {
				c.fail("%s: %w: empty parameter name", desc, ErrInvalidWorkflow)
				ok = false
			}
		}
		segs, err := parsePath(path)
		if err != nil {
			c.fail("%s: %w: %w", desc, ErrInvalidWorkflow, err)
			ok = false
		}
		in := inputDecl{name: d.input, src: srcParam, path: segs}
		if ok && !d.isParam {
			in.src = from
			in.branch, in.path, ok = c.branchOf(from, segs, desc)
		}
		if d.isParam && len(segs) > 0 {
			in.param, in.path = segs[0].key, segs[1:]
		}
		key := [2]string{d.to, d.input}
		if prev, dup := bound[key]; dup && d.input != "" {
			c.fail("%s: %w: %s is already bound by %q", desc, ErrDuplicateInput, dotted(d.to, d.input), prev)
			continue
		}
		bound[key] = desc
		if ok {
			c.inputs[to] = append(c.inputs[to], in)
		}
	}
}

func (c *compiler) bindAfters() {
	c.afters = make([][]int, len(c.b.decls))
	for _, a := range c.b.afters {
		desc := fmt.Sprintf("after: %s waits for %s", a.id, a.dep)
		i, ok1 := c.node(a.id, desc)
		d, ok2 := c.node(a.dep, desc)
		if ok1 && ok2 && !slices.Contains(c.afters[i], d) {
			c.afters[i] = append(c.afters[i], d)
		}
	}
}

// graph builds the forward graph from connections and dependencies.
func (c *compiler) graph() {
	c.succ = make([][]int, len(c.b.decls))
	add := func(from, to int) {
		if !slices.Contains(c.succ[from], to) {
			c.succ[from] = append(c.succ[from], to)
		}
	}
	for to, ins := range c.inputs {
		for _, in := range ins {
			if in.src >= 0 {
				add(in.src, to)
			}
		}
	}
	for to, deps := range c.afters {
		for _, d := range deps {
			add(d, to)
		}
	}
}

// checkUndeclaredCycles reports every strongly connected component of the
// forward graph that is a loop, and returns whether there was none.
func (c *compiler) checkUndeclaredCycles() bool {
	acyclic := true
	for _, scc := range stronglyConnected(c.succ) {
		if len(scc) == 1 && !slices.Contains(c.succ[scc[0]], scc[0]) {
			continue
		}
		acyclic = false
		slices.Sort(scc)
		ids := make([]string, len(scc))
		for i, v := range scc {
			ids[i] = c.b.decls[v].id
		}
		c.fail("%w among nodes %s: declare it with Builder.Cycle or remove a connection", ErrUndeclaredCycle, strings.Join(ids, ", "))
	}
	return acyclic
}

// declareCycles checks the declared cycles and finds their bodies; the
// bodies need an acyclic forward graph.
func (c *compiler) declareCycles(acyclic bool) {
	names := make(map[string]bool)
	owner := make(map[int]string)
	backInputs := make(map[[2]string]string)
	for _, d := range c.b.cycles {
		desc := fmt.Sprintf("cycle %s", d.name)
		ok := true
		if d.name == "" {
			c.fail("cycle: %w: empty name", ErrInvalidWorkflow)
			ok = false
		} else if names[d.name] {
			c.fail("%s: %w: declared twice", desc, ErrInvalidWorkflow)
			ok = false
		}
		names[d.name] = true
		from, ok1 := c.node(d.c.From, desc)
		to, ok2 := c.node(d.c.To, desc)
		ok = ok && ok1 && ok2
		if d.c.Input == "" {
			c.fail("%s: %w: empty input name", desc, ErrInvalidWorkflow)
			ok = false
		}
		if d.c.MaxIterations < 1 {
			c.fail("%s: %w: MaxIterations is %d, want at least 1", desc, ErrInvalidWorkflow, d.c.MaxIterations)
			ok = false
		}
		segs, err := parsePath(d.c.Output)
		if err != nil {
			c.fail("%s: %w: %w", desc, ErrInvalidWorkflow, err)
			ok = false
		}
		info := cycleInfo{decl: d, from: from, to: to, path: segs}
		if ok {
			info.branch, info.path, ok = c.branchOf(from, segs, desc)
		}
		key := [2]string{d.c.To, d.c.Input}
		if prev, dup := backInputs[key]; dup && ok {
			c.fail("%s: %w: %s is already fed by cycle %s", desc, ErrDuplicateInput, dotted(d.c.To, d.c.Input), prev)
			ok = false
		}
		backInputs[key] = d.name
		if !ok || !acyclic {
			continue
		}
		reach := reachable(c.succ, to)
		if !reach[from] {
			c.fail("%s: %w: %s does not lead to %s, so the back-edge %s → %s closes no loop", desc, ErrNotACycle,
				d.c.To, d.c.From, dotted(d.c.From, d.c.Output), dotted(d.c.To, d.c.Input))
			continue
		}
		coreach := reachable(reverse(c.succ), from)
		for v := range c.b.decls {
			if reach[v] && coreach[v] {
				info.body = append(info.body, v)
			}
		}
		shared := false
		for _, v := range info.body {
			if other, taken := owner[v]; taken {
				c.fail("%s: %w: node %s is also in cycle %s; cycles may not share nodes", desc, ErrInvalidWorkflow, c.b.decls[v].id, other)
				shared = true
			}
		}
		if shared {
			continue
		}
		for _, v := range info.body {
			owner[v] = d.name
		}
		c.cycles = append(c.cycles, info)
	}
}

// lay orders the nodes for execution and builds the Workflow. Each cycle's
// body becomes one unit; every other node is a unit of its own.
func (c *compiler) lay() *Workflow {
	n := len(c.b.decls)
	rank := make([]int, n) // position in one topological order of the forward graph
	for pos, v := range topoOrder(c.succ) {
		rank[v] = pos
	}
	unitOf := make([]int, n)
	for i := range unitOf {
		unitOf[i] = -1
	}
	var members [][]int
	var cycleOfUnit []int
	for ci := range c.cycles {
		body := c.cycles[ci].body
		slices.SortFunc(body, func(x, y int) int { return rank[x] - rank[y] })
		for _, v := range body {
			unitOf[v] = len(members)
		}
		members = append(members, body)
		cycleOfUnit = append(cycleOfUnit, ci)
	}
	for v := range n {
		if unitOf[v] < 0 {
			unitOf[v] = len(members)
			members = append(members, []int{v})
			cycleOfUnit = append(cycleOfUnit, -1)
		}
	}
	usucc := make([][]int, len(members))
	for v := range n {
		for _, w := range c.succ[v] {
			if u, x := unitOf[v], unitOf[w]; u != x && !slices.Contains(usucc[u], x) {
				usucc[u] = append(usucc[u], x)
			}
		}
	}
	uorder := topoOrder(usucc)
	if len(uorder) < len(members) {
		var stuck []string
		placed := make([]bool, len(members))
		for _, u := range uorder {
			placed[u] = true
		}
		for u, ci := range cycleOfUnit {
			if !placed[u] && ci >= 0 {
				stuck = append(stuck, c.cycles[ci].decl.name)
			}
		}
		c.fail("%w: cycles %s depend on each other", ErrUndeclaredCycle, strings.Join(stuck, ", "))
		return nil
	}

	// Renumber nodes and units in execution order.
	newNode := make([]int32, n)
	newUnit := make([]int32, len(members))
	var order []int
	for ui, u := range uorder {
		newUnit[u] = int32(ui)
		for _, v := range members[u] {
			newNode[v] = int32(len(order))
			order = append(order, v)
		}
	}

	wf := &Workflow{
		name:   c.b.name,
		nodes:  make([]nodeSpec, n),
		byID:   make(map[string]int32, n),
		units:  make([]unitSpec, len(members)),
		cycles: make([]cycleSpec, len(c.cycles)),
	}
	params := make(map[string]bool)
	for ni, v := range order {
		d := c.b.decls[v]
		s := &wf.nodes[ni]
		s.id = d.id
		s.node = d.node
		s.policy = c.pols[v]
		s.kind = kindOf(d.node)
		s.backInput = -1
		_, s.merge = d.node.(merger)
		for _, in := range c.inputs[v] {
			spec := inputSpec{name: in.name, src: srcParam, param: in.param, path: in.path, branch: in.branch}
			if in.src >= 0 {
				spec.src = newNode[in.src]
			} else {
				params[in.param] = true
			}
			s.inputs = append(s.inputs, spec)
			s.names = append(s.names, in.name)
		}
		for _, dep := range c.afters[v] {
			s.after = append(s.after, newNode[dep])
		}
		wf.byID[d.id] = int32(ni)
	}
	for ci, info := range c.cycles {
		cs := &wf.cycles[ci]
		cs.name = info.decl.name
		cs.from = newNode[info.from]
		cs.to = newNode[info.to]
		cs.path = info.path
		cs.branch = info.branch
		cs.max = info.decl.c.MaxIterations
		cs.converged = info.decl.c.Converged
		cs.accept = info.decl.c.AcceptUnconverged
		for _, v := range info.body {
			cs.body = append(cs.body, newNode[v])
		}
		slices.Sort(cs.body)
		to := &wf.nodes[cs.to]
		to.backInput = slices.Index(to.names, info.decl.c.Input)
		if to.backInput < 0 {
			// Bound by the back-edge only: absent in the first iteration.
			to.backInput = len(to.inputs)
			to.inputs = append(to.inputs, inputSpec{name: info.decl.c.Input, src: srcBack})
			to.names = append(to.names, info.decl.c.Input)
		}
	}
	// Lay out the input buffer now that back-edge inputs are in.
	wf.bufLen = 0
	for i := range wf.nodes {
		wf.nodes[i].off = wf.bufLen
		wf.bufLen += len(wf.nodes[i].inputs)
	}
	for _, u := range uorder {
		us := &wf.units[newUnit[u]]
		us.cycle = int32(cycleOfUnit[u])
		for _, v := range members[u] {
			us.nodes = append(us.nodes, newNode[v])
		}
		slices.Sort(us.nodes)
		for _, x := range usucc[u] {
			us.next = append(us.next, newUnit[x])
			wf.units[newUnit[x]].deps++
		}
		slices.Sort(us.next)
	}
	for ui := range wf.units {
		if wf.units[ui].deps == 0 {
			wf.roots = append(wf.roots, int32(ui))
		}
	}
	for p := range params {
		wf.params = append(wf.params, p)
	}
	slices.Sort(wf.params)
	return wf
}

func kindOf(n Node) string {
	if k, ok := n.(Kinder); ok {
		return k.Kind()
	}
	return fmt.Sprintf("%T", n)
}

// stronglyConnected returns the strongly connected components of g
// (Tarjan's algorithm).
func stronglyConnected(g [][]int) [][]int {
	n := len(g)
	index := make([]int, n)
	low := make([]int, n)
	onStack := make([]bool, n)
	for i := range index {
		index[i] = -1
	}
	var (
		stack []int
		out   [][]int
		next  int
		visit func(v int)
	)
	visit = func(v int) {
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range g[v] {
			if index[w] < 0 {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var scc []int
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				scc = append(scc, w)
				if w == v {
					break
				}
			}
			out = append(out, scc)
		}
	}
	for v := range n {
		if index[v] < 0 {
			visit(v)
		}
	}
	return out
}

// topoOrder returns the vertices of g in a topological order (Kahn's
// algorithm, ties by index); vertices on a loop are left out.
func topoOrder(g [][]int) []int {
	indeg := make([]int, len(g))
	for _, ws := range g {
		for _, w := range ws {
			indeg[w]++
		}
	}
	var ready, order []int
	for v, d := range indeg {
		if d == 0 {
			ready = append(ready, v)
		}
	}
	for len(ready) > 0 {
		v := ready[0]
		ready = ready[1:]
		order = append(order, v)
		for _, w := range g[v] {
			if indeg[w]--; indeg[w] == 0 {
				ready = append(ready, w)
			}
		}
	}
	return order
}

func reachable(g [][]int, from int) []bool {
	seen := make([]bool, len(g))
	seen[from] = true
	stack := []int{from}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, w := range g[v] {
			if !seen[w] {
				seen[w] = true
				stack = append(stack, w)
			}
		}
	}
	return seen
}

func reverse(g [][]int) [][]int {
	r := make([][]int, len(g))
	for v, ws := range g {
		for _, w := range ws {
			r[w] = append(r[w], v)
		}
	}
	return r
}
