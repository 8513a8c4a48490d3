package workflow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// maxParamsBytes bounds the body of POST /workflows/{name}/runs.
const maxParamsBytes = 1 << 20

// RunResult is what `kproxy workflow run` prints and POST
// /workflows/{name}/runs answers: the run's ID, the outputs of the nodes
// that produced one, by node ID, and the trace; Error is the run's error
// when it failed.
type RunResult struct {
	RunID   string         `json:"run_id"`
	Results map[string]any `json:"results"`
	Trace   *Trace         `json:"trace"`
	Error   string         `json:"error,omitempty"`
}

// NewRunResult returns the RunResult of run and the error Execute (or
// Hosted.Run) returned with it. When the outputs do not encode as JSON (a
// NaN, say), Results is nil and Error says so; the ID and trace always
// encode.
func NewRunResult(run *Run, err error) RunResult {
	res := RunResult{RunID: run.ID, Results: run.Results(), Trace: run.Trace}
	if err != nil {
		res.Error = err.Error()
	}
	if _, jerr := json.Marshal(res.Results); jerr != nil {
		res.Results = nil
		if res.Error != "" {
			res.Error += "; "
		}
		res.Error += fmt.Sprintf("results not sent: %v", jerr)
	}
	return res
}

// DecodeParams decodes run parameters from a JSON object. Numbers become
// int64 when they are whole and fit, float64 otherwise (also inside lists
// and objects), so that they bind to integer SQL parameters. An empty
// document is no parameters.
func DecodeParams(data []byte) (map[string]any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("parameters: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("parameters: more than one JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("parameters: want a JSON object, got %s", jsonKind(v))
	}
	return numbers(m).(map[string]any), nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

// numbers replaces the json.Numbers in v.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}

// Handler serves the hosted workflows over HTTP; kproxy mounts it on the
// admin listener:
//
//	GET  /workflows              {"workflows": [HostedInfo…]}
//	POST /workflows/{name}/runs  run name; the body is a JSON object of parameters
//	GET  /workflows/runs/{id}    the Trace of run id, while it is kept
//
// A run answers 200 with a RunResult; 500 with a RunResult holding the
// error when nodes failed; 504 likewise when the workflow's timeout ended
// the run; 404 for an unknown workflow; 400 for a body that is not one JSON
// object; 413 for a body over 1 MiB; 422 when required parameters are
// missing. Other failures answer {"error": "…"}. The run is cancelled when
// the client goes away.
func (h *Hosted) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /workflows", func(w http.ResponseWriter, r *http.Request) {
		list := []HostedInfo{}
		for _, name := range h.Names() {
			if info, ok := h.Info(name); ok {
				list = append(list, info)
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"workflows": list})
	})
	mux.HandleFunc("GET /workflows/runs/{id}", func(w http.ResponseWriter, r *http.Request) {
		t, ok := h.Trace(r.PathValue("id"))
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("no trace of run %q: unknown, or no longer kept", r.PathValue("id")))
			return
		}
		writeJSON(w, http.StatusOK, t)
	})
	mux.HandleFunc("POST /workflows/{name}/runs", h.serveRun)
	return mux
}

func (h *Hosted) serveRun(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := h.Info(name); !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("%w %q", ErrUnknownWorkflow, name))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxParamsBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("parameters: larger than %d bytes", tooBig.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("reading the parameters: %w", err))
		return
	}
	params, err := DecodeParams(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	run, err := h.Run(r.Context(), name, params)
	switch {
	case run == nil && errors.Is(err, ErrMissingParam):
		writeError(w, http.StatusUnprocessableEntity, err)
		return
	case run == nil && errors.Is(err, ErrUnknownWorkflow):
		writeError(w, http.StatusNotFound, err) // removed by a reload meanwhile
		return
	case run == nil:
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	status := http.StatusOK
	switch {
	case errors.Is(err, ErrRunTimeout):
		status = http.StatusGatewayTimeout
	case err != nil:
		status = http.StatusInternalServerError
	}
	res := NewRunResult(run, err)
	if res.Results == nil {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, res)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// writeJSON encodes v before writing anything, so that a value that does
// not encode (a NaN from a node) is reported instead of half sent.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": "encoding the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
