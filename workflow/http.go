package workflow

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// HTTPClientOptions configures NewHTTPClient. Zero fields take the defaults.
type HTTPClientOptions struct {
	// MaxConnsPerHost bounds the connections to one host, in use or idle;
	// further requests wait for one. Default 100.
	MaxConnsPerHost int
	// Timeout bounds a whole request, the response body included; default
	// 30s. A node's context (WithTimeout, cancellation) bounds it too.
	Timeout time.Duration
	// IdleConnTimeout closes connections idle this long; default 90s.
	IdleConnTimeout time.Duration
}

// NewHTTPClient returns an *http.Client for HTTP nodes. Create one per
// process (or per remote service) and share it between nodes: its
// connection pool and its MaxConnsPerHost limit are what the nodes share.
// Its owner calls CloseIdleConnections when done with it.
func NewHTTPClient(o HTTPClientOptions) *http.Client {
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = 100
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.IdleConnTimeout <= 0 {
		o.IdleConnTimeout = 90 * time.Second
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxConnsPerHost = o.MaxConnsPerHost
	t.MaxIdleConnsPerHost = o.MaxConnsPerHost
	t.MaxIdleConns = max(t.MaxIdleConns, o.MaxConnsPerHost)
	t.IdleConnTimeout = o.IdleConnTimeout
	return &http.Client{Transport: t, Timeout: o.Timeout}
}

// HTTPRequest configures an HTTP node.
//
// The node's inputs refine the request: "url" (a string) replaces URL,
// "query" (a map) adds query parameters, "headers" (a map) adds headers,
// and "body" is sent JSON-encoded with Content-Type application/json.
type HTTPRequest struct {
	// Client sends the request; required. See NewHTTPClient.
	Client *http.Client
	// Method defaults to GET, or POST when a "body" input is bound.
	Method string
	// URL is the request URL unless a "url" input is bound.
	URL string
	// Header is sent with every request.
	Header http.Header
	// MaxResponseBytes bounds the response body; default 8 MiB.
	MaxResponseBytes int64
	// AcceptStatus reports whether a status is a success; default 2xx.
	// Any other status fails the node with an *HTTPStatusError.
	AcceptStatus func(status int) bool
}

// HTTPResponse is the output of an HTTP node.
type HTTPResponse struct {
	Status int         `json:"status"`
	Header http.Header `json:"headers"`
	// Body is the decoded JSON when the response is JSON
	// (application/json or +json), else the body as a string.
	Body any `json:"body"`
}

// Lookup resolves "status", "headers" and "body", so that a connection can
// take output "body.items".
func (r *HTTPResponse) Lookup(key string) (any, bool) {
	switch key {
	case "status":
		return r.Status, true
	case "headers":
		return r.Header, true
	case "body":
		return r.Body, true
	}
	return nil, false
}

// HTTPStatusError is a response whose status AcceptStatus refused.
type HTTPStatusError struct {
	Status int
	Body   any // decoded as for HTTPResponse.Body
}

func (e *HTTPStatusError) Error() string {
	body := fmt.Sprint(e.Body)
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	return fmt.Sprintf("http status %d: %s", e.Status, body)
}

// HTTP returns a node that sends the request r describes and outputs an
// *HTTPResponse.
func HTTP(r HTTPRequest) Node {
	if r.MaxResponseBytes <= 0 {
		r.MaxResponseBytes = 8 << 20
	}
	if r.AcceptStatus == nil {
		r.AcceptStatus = func(s int) bool { return s >= 200 && s < 300 }
	}
	return &httpNode{r: r}
}

type httpNode struct{ r HTTPRequest }

func (n *httpNode) Kind() string { return "http" }

func (n *httpNode) Validate() error {
	if n.r.Client == nil {
		return errors.New("http: nil Client")
	}
	if n.r.URL != "" {
		if _, err := url.Parse(n.r.URL); err != nil {
			return fmt.Errorf("http: %w", err)
		}
	}
	return nil
}

func (n *httpNode) Run(ctx context.Context, in Inputs) (any, error) {
	req, err := n.request(ctx, in)
	if err != nil {
		return nil, err
	}
	resp, err := n.r.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, n.r.MaxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("http: reading the response: %w", err)
	}
	if int64(len(raw)) > n.r.MaxResponseBytes {
		return nil, fmt.Errorf("http: response larger than %d bytes", n.r.MaxResponseBytes)
	}
	body, err := decodeBody(resp.Header.Get("Content-Type"), raw)
	if err != nil {
		return nil, err
	}
	if !n.r.AcceptStatus(resp.StatusCode) {
		return nil, &HTTPStatusError{Status: resp.StatusCode, Body: body}
	}
	return &HTTPResponse{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

func (n *httpNode) request(ctx context.Context, in Inputs) (*http.Request, error) {
	target := n.r.URL
	if v, ok := in.Get("url"); ok {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("http: %w: input \"url\" is %T, want a string", ErrInputType, v)
		}
		target = s
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	if v, ok := in.Get("query"); ok {
		q := u.Query()
		if err := eachString(v, "query", func(k, s string) { q.Add(k, s) }); err != nil {
			return nil, err
		}
		u.RawQuery = q.Encode()
	}
	method := n.r.Method
	var body io.Reader
	if v, ok := in.Get("body"); ok {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("http: encoding the body: %w", err)
		}
		body = bytes.NewReader(b)
		if method == "" {
			method = http.MethodPost
		}
	}
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	for k, vs := range n.r.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if v, ok := in.Get("headers"); ok {
		if err := eachString(v, "headers", req.Header.Add); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// eachString calls f for each key and value of a map input, values
// formatted with fmt.Sprint and lists giving one call per element.
func eachString(v any, name string, f func(k, v string)) error {
	switch m := v.(type) {
	case map[string]string:
		for k, s := range m {
			f(k, s)
		}
	case http.Header:
		for k, vs := range m {
			for _, s := range vs {
				f(k, s)
			}
		}
	case url.Values:
		for k, vs := range m {
			for _, s := range vs {
				f(k, s)
			}
		}
	case map[string]any:
		for k, x := range m {
			if list, ok := x.([]any); ok {
				for _, e := range list {
					f(k, fmt.Sprint(e))
				}
				continue
			}
			f(k, fmt.Sprint(x))
		}
	default:
		return fmt.Errorf("http: %w: input %q is %T, want a map", ErrInputType, name, v)
	}
	return nil
}

func decodeBody(contentType string, raw []byte) (any, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		return string(raw), nil
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("http: decoding the JSON response: %w", err)
	}
	return v, nil
}
