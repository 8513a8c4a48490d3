package workflow

import (
	"fmt"
	"runtime/debug"
)

// runCycle runs a declared cycle's body until it converges, reaches
// MaxIterations, fails or the run is cancelled. The body's nodes run one
// after another on this driver.
func (r *exec) runCycle(ci int32) {
	cs := &r.wf.cycles[ci]
	ct := &r.cycles[ci]
	start := r.clock.Now()
	defer func() { ct.Duration = r.clock.Now().Sub(start) }()

	var back any
	for it := 1; ; it++ {
		if r.canceled() {
			for _, i := range cs.body {
				r.settle(i, stateCanceled, nil)
			}
			return
		}
		ct.Iterations = it
		failed := false
		for _, i := range cs.body {
			if r.canceled() {
				r.settle(i, stateCanceled, nil)
				failed = true
				continue
			}
			r.runNodeBack(i, back, it > 1 && i == cs.to)
			switch r.states[i] {
			case stateSkipped, stateUpstreamFailed, stateCanceled:
			default:
				r.nodes[i].Iterations++
			}
			if r.states[i].failed() {
				failed = true
			}
		}
		if failed {
			// The failed nodes are in the run's error; what depends on
			// them fails upstream as anywhere else.
			return
		}
		if cs.converged != nil {
			done, err := r.converged(cs, it)
			if err != nil {
				r.failCycle(ci, it, err)
				return
			}
			if done {
				ct.Converged = true
				return
			}
		}
		if it >= cs.max {
			if cs.converged != nil && !cs.accept {
				r.failCycle(ci, it, fmt.Errorf("%w within %d iterations", ErrNotConverged, cs.max))
			}
			return
		}
		v, err := r.backValue(cs)
		if err != nil {
			r.failCycle(ci, it, fmt.Errorf("back-edge %s → %s: %w", r.wf.nodes[cs.from].id, r.wf.nodes[cs.to].id, err))
			return
		}
		back = v
	}
}

// backValue is what the back-edge carries after an iteration: absent when
// its source did not produce an output on the edge's branch.
func (r *exec) backValue(cs *cycleSpec) (any, error) {
	if !r.states[cs.from].produced() || (cs.branch != "" && !r.onBranch(cs.from, cs.branch)) {
		return absent{}, nil
	}
	v := r.results[cs.from]
	if cs.branch != "" {
		v = r.results[cs.from].(Branch).Value
	}
	return resolvePath(v, cs.path)
}

// converged calls the cycle's predicate with the body's outputs.
func (r *exec) converged(cs *cycleSpec, it int) (done bool, err error) {
	outs := make(map[string]any, len(cs.body))
	for _, i := range cs.body {
		if r.states[i].produced() {
			outs[r.wf.nodes[i].id] = r.results[i]
		}
	}
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return cs.converged(it, outs), nil
}

// failCycle fails a cycle whose nodes all ran: they keep their outputs
// (Run.Result returns them) but count as failed for what depends on them.
func (r *exec) failCycle(ci int32, it int, err error) {
	cs := &r.wf.cycles[ci]
	ce := &CycleError{Cycle: cs.name, Iterations: it, Err: err}
	for _, i := range cs.body {
		if r.states[i].produced() {
			r.states[i] = stateUnconverged
			r.nodes[i].Outcome = stateUnconverged.outcome()
			r.nodes[i].Error = ce.Error()
		}
	}
	r.cycleErrs[ci] = ce
}
