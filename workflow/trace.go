package workflow

import (
	"encoding/json"
	"sync"
	"time"
)

// Outcome is how a node, or a whole run, ended.
type Outcome string

// Outcomes. A run's outcome is OutcomeOK, OutcomeFailed or OutcomeCanceled.
const (
	// OutcomeOK: the node ran and returned an output.
	OutcomeOK Outcome = "ok"
	// OutcomeCached: the output came from WithCache; the node did not run.
	OutcomeCached Outcome = "cached"
	// OutcomeFallback: the node timed out or failed and its output is its
	// fallback's.
	OutcomeFallback Outcome = "fallback"
	// OutcomeFailed: the node failed (its error is in the trace and in the
	// run's error).
	OutcomeFailed Outcome = "failed"
	// OutcomeUpstreamFailed: the node did not run because a node it depends
	// on failed.
	OutcomeUpstreamFailed Outcome = "upstream_failed"
	// OutcomeSkipped: the node did not run because it is on a switch branch
	// that was not taken, or depends on a node that was skipped.
	OutcomeSkipped Outcome = "skipped"
	// OutcomeCanceled: the node did not start, or was stopped, because the
	// run's context was cancelled.
	OutcomeCanceled Outcome = "canceled"
)

// Trace is the record of one run. Durations encode in JSON as fractional
// milliseconds in fields ending in _ms, times as RFC 3339 with nanoseconds.
// A Trace is complete and immutable once Execute has returned it; it is
// shared with the runtime's history, so it must not be modified.
type Trace struct {
	RunID    string
	Workflow string
	Start    time.Time
	Duration time.Duration
	Outcome  Outcome
	Error    string       // the run's error, or ""
	Nodes    []NodeTrace  // every node, in execution order
	Cycles   []CycleTrace // every declared cycle
}

// NodeTrace is the record of one node in one run.
type NodeTrace struct {
	Node    string
	Kind    string
	Outcome Outcome
	// Start is when the node was first called (zero when it never was);
	// Duration sums its calls, all attempts, waits and iterations included.
	Start    time.Time
	Duration time.Duration
	// Attempts counts calls of the node's Run, retries and cycle
	// iterations included; 0 for a cache hit and for nodes that did not run.
	Attempts int
	// Rows is the row count the output reported (RowCounter), or nil.
	Rows *int64
	// Iterations counts the cycle iterations the node ran in; 0 outside
	// cycles.
	Iterations int
	// Items and ItemErrors count a parallel map's items and failed items.
	Items, ItemErrors int
	// Branch is the branch a switch took.
	Branch string
	// Error is why the node failed, or what its fallback replaced.
	Error string
}

// CycleTrace is the record of one declared cycle in one run.
type CycleTrace struct {
	Name       string
	Iterations int
	Converged  bool
	Duration   time.Duration
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMS(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }

type traceJSON struct {
	RunID      string       `json:"run_id"`
	Workflow   string       `json:"workflow"`
	Start      time.Time    `json:"start"`
	DurationMS float64      `json:"duration_ms"`
	Outcome    Outcome      `json:"outcome"`
	Error      string       `json:"error,omitempty"`
	Nodes      []NodeTrace  `json:"nodes"`
	Cycles     []CycleTrace `json:"cycles,omitempty"`
}

// MarshalJSON encodes the trace with durations in milliseconds.
func (t *Trace) MarshalJSON() ([]byte, error) {
	return json.Marshal(traceJSON{t.RunID, t.Workflow, t.Start, ms(t.Duration), t.Outcome, t.Error, t.Nodes, t.Cycles})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (t *Trace) UnmarshalJSON(b []byte) error {
	var j traceJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*t = Trace{j.RunID, j.Workflow, j.Start, fromMS(j.DurationMS), j.Outcome, j.Error, j.Nodes, j.Cycles}
	return nil
}

type nodeTraceJSON struct {
	Node       string    `json:"node"`
	Kind       string    `json:"kind"`
	Outcome    Outcome   `json:"outcome"`
	Start      time.Time `json:"start,omitzero"`
	DurationMS float64   `json:"duration_ms"`
	Attempts   int       `json:"attempts"`
	Rows       *int64    `json:"rows,omitempty"`
	Iterations int       `json:"iterations,omitempty"`
	Items      int       `json:"items,omitempty"`
	ItemErrors int       `json:"item_errors,omitempty"`
	Branch     string    `json:"branch,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// MarshalJSON encodes the node's record with its duration in milliseconds.
func (t NodeTrace) MarshalJSON() ([]byte, error) {
	return json.Marshal(nodeTraceJSON{t.Node, t.Kind, t.Outcome, t.Start, ms(t.Duration), t.Attempts,
		t.Rows, t.Iterations, t.Items, t.ItemErrors, t.Branch, t.Error})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (t *NodeTrace) UnmarshalJSON(b []byte) error {
	var j nodeTraceJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*t = NodeTrace{j.Node, j.Kind, j.Outcome, j.Start, fromMS(j.DurationMS), j.Attempts,
		j.Rows, j.Iterations, j.Items, j.ItemErrors, j.Branch, j.Error}
	return nil
}

type cycleTraceJSON struct {
	Name       string  `json:"name"`
	Iterations int     `json:"iterations"`
	Converged  bool    `json:"converged"`
	DurationMS float64 `json:"duration_ms"`
}

// MarshalJSON encodes the cycle's record with its duration in milliseconds.
func (t CycleTrace) MarshalJSON() ([]byte, error) {
	return json.Marshal(cycleTraceJSON{t.Name, t.Iterations, t.Converged, ms(t.Duration)})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (t *CycleTrace) UnmarshalJSON(b []byte) error {
	var j cycleTraceJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*t = CycleTrace{j.Name, j.Iterations, j.Converged, fromMS(j.DurationMS)}
	return nil
}

// traceHistory keeps the traces of the last runs, retrievable by run ID.
type traceHistory struct {
	mu   sync.Mutex
	ring []*Trace          // guarded by mu; oldest overwritten first
	next int               // guarded by mu; slot the next trace goes to
	byID map[string]*Trace // guarded by mu
}

func newTraceHistory(size int) *traceHistory {
	return &traceHistory{ring: make([]*Trace, size), byID: make(map[string]*Trace, size)}
}

func (h *traceHistory) add(t *Trace) {
	if len(h.ring) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if old := h.ring[h.next]; old != nil {
		delete(h.byID, old.RunID)
	}
	h.ring[h.next] = t
	h.byID[t.RunID] = t
	h.next = (h.next + 1) % len(h.ring)
}

func (h *traceHistory) get(id string) (*Trace, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.byID[id]
	return t, ok
}

// recent returns the kept traces, newest first.
func (h *traceHistory) recent() []*Trace {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Trace, 0, len(h.byID))
	for i := range len(h.ring) {
		t := h.ring[(h.next-1-i+2*len(h.ring))%len(h.ring)]
		if t == nil {
			break
		}
		out = append(out, t)
	}
	return out
}
