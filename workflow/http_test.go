package workflow_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/workflow"
)

func newHTTPClient(t *testing.T, maxConns int) *http.Client {
	c := workflow.NewHTTPClient(workflow.HTTPClientOptions{MaxConnsPerHost: maxConns, Timeout: 10 * time.Second})
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestHTTPNodeSendsJSONAndDecodesTheResponse(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "q": r.URL.Query().Get("verbose"),
			"token": r.Header.Get("X-Token"), "tenant": r.Header.Get("X-Tenant"), "got": body,
		})
	}))
	t.Cleanup(srv.Close)

	node := workflow.HTTP(workflow.HTTPRequest{
		Client: newHTTPClient(t, 4),
		URL:    srv.URL + "/orders",
		Header: http.Header{"X-Token": {"secret"}},
	})
	wf := build(t, workflow.New("http").
		Add("post", node).
		Add("use", echo).
		BindParam("post", "body", "order").
		BindParam("post", "query", "query").
		BindParam("post", "headers", "headers").
		Connect("post", "body.got.id", "use", "id").
		Connect("post", "status", "use", "status"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{
		"order":   map[string]any{"id": 42, "qty": 2},
		"query":   map[string]any{"verbose": true},
		"headers": map[string]string{"X-Tenant": "acme"},
	})
	require.NoError(t, err)
	v, _ := run.Result("post")
	resp := v.(*workflow.HTTPResponse)
	assert.Equal(t, http.StatusCreated, resp.Status)
	assert.Equal(t, map[string]any{
		"method": "POST", "path": "/orders", "q": "true", "token": "secret", "tenant": "acme",
		"got": map[string]any{"id": 42.0, "qty": 2.0},
	}, resp.Body)
	got, _ := run.Result("use")
	assert.Equal(t, map[string]any{"id": 42.0, "status": 201}, got)
	assert.Equal(t, "http", nodeTrace(t, run, "post").Kind)
}

func TestHTTPNodeFailsOnAnErrorStatusAndRetriesServerErrors(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.URL.Path == "/missing" {
			http.Error(w, "no such order", http.StatusNotFound)
			return
		}
		if n < 3 {
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("plain text"))
	}))
	t.Cleanup(srv.Close)
	client := newHTTPClient(t, 1)
	retry := workflow.NewRetry(workflow.RetryOptions{MaxAttempts: 5, InitialDelay: time.Millisecond})
	rt := newRuntime(t, workflow.RuntimeOptions{})

	wf := build(t, workflow.New("flaky").Add("get", workflow.HTTP(workflow.HTTPRequest{Client: client, URL: srv.URL + "/ok"}), workflow.WithRetry(retry)))
	run, err := execute(t, rt, wf, nil)
	require.NoError(t, err)
	assert.Equal(t, 3, nodeTrace(t, run, "get").Attempts, "503 is retried")
	body, _ := run.Lookup("get", "body")
	assert.Equal(t, "plain text", body)

	wf = build(t, workflow.New("missing").Add("get", workflow.HTTP(workflow.HTTPRequest{Client: client, URL: srv.URL + "/missing"}), workflow.WithRetry(retry)))
	run, err = execute(t, rt, wf, nil)
	var se *workflow.HTTPStatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusNotFound, se.Status)
	assert.Equal(t, "no such order\n", se.Body)
	assert.Equal(t, 1, nodeTrace(t, run, "get").Attempts, "404 is not retried")
}

func TestHTTPClientLimitsConnectionsPerHost(t *testing.T) {
	t.Parallel()
	var g gauge
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.enter()
		defer g.leave()
		time.Sleep(20 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(srv.Close)
	const limit = 3
	get := workflow.HTTP(workflow.HTTPRequest{Client: newHTTPClient(t, limit), URL: srv.URL})
	// Twenty items at once through a client that may open three connections.
	m := workflow.Map(get, workflow.MapOptions{MaxWorkers: 20})
	wf := build(t, workflow.New("fanout").Add("m", m).BindParam("m", "items", "items"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"items": ints(20)})
	require.NoError(t, err)
	assert.LessOrEqual(t, g.peak(), limit)
	assert.Equal(t, 20, nodeTrace(t, run, "m").Items)
	first, err := run.Lookup("m", "results.0.body.ok")
	require.NoError(t, err)
	assert.Equal(t, true, first)
}

func TestHTTPNodeStopsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	get := workflow.HTTP(workflow.HTTPRequest{Client: newHTTPClient(t, 1), URL: srv.URL})
	wf := build(t, workflow.New("slow").Add("get", get, workflow.WithTimeout(30*time.Millisecond, workflow.Fallback{})))
	_, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, nil)
	assert.ErrorIs(t, err, workflow.ErrTimeout)
}
