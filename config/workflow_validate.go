package config

import (
	"fmt"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// namePattern is what workflow, node, input, parameter and branch names
// look like: usable in references (no dots) and in URLs.
var namePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

const nameRule = "letters, digits, _ and -, starting with a letter or _"

// reservedNames start references that do not name a node or an input.
var reservedNames = []string{"params", "item", "index", "steps"}

// commonNodeKeys apply to every kind of node.
var commonNodeKeys = []string{"id", "kind", "inputs", "after", "retry", "timeout", "fallback", "breaker", "rate_limit", "cache"}

// kindKeys are the keys each kind adds to commonNodeKeys.
var kindKeys = map[string][]string{
	KindSQL:    {"sql", "args", "mode", "expect_rows", "steps"},
	KindHTTP:   {"method", "url", "headers", "body"},
	KindCache:  {"op", "store", "key", "prefix", "ttl", "value"},
	KindMap:    {"items", "body", "max_workers", "batch_size", "timeout_per_item", "continue_on_error"},
	KindSwitch: {"on", "cases", "default"},
	KindMerge:  {"mode"},
}

// bodyForbiddenKeys cannot be used in a map body: it is no node of the
// graph, and the map bounds each item's time itself.
var bodyForbiddenKeys = map[string]string{
	"id":      "a map body has no ID; references use the map node's",
	"after":   "a map body runs when its map does; put after on the map node",
	"timeout": "use the map node's timeout_per_item",
	"cache":   "put cache on the map node",
}

var nodeFields = yamlFields(reflect.TypeFor[WorkflowNode]())

// ReadWorkflow reads a file holding one workflow: the keys of one entry of
// workflows, with its name. The workflow is checked like one in the main
// file, against c's workflow_resilience and workflow_cache; the problems'
// paths are the file's own keys ("nodes[0].sql"). As Validate does, it
// fills in the defaults. A file that cannot be read or is not YAML is
// reported alone.
func ReadWorkflow(path string, c *Config) (Workflow, error) {
	var w Workflow
	data, err := os.ReadFile(path)
	if err != nil {
		return w, fmt.Errorf("workflow: %w", err)
	}
	var ps problems
	if err := decodeYAMLInto(data, reflect.ValueOf(&w).Elem(), &ps); err != nil {
		return w, fmt.Errorf("workflow: %s: %w", path, err)
	}
	switch {
	case w.Name == "":
		ps.add("name", "required")
	case !namePattern.MatchString(w.Name):
		ps.add("name", "must be %s; got %q", nameRule, w.Name)
	}
	c.checkWorkflow(&ps, "", &w)
	return w, problemError(ps)
}

// validateWorkflows checks the workflow sections and fills in the
// workflows' defaults.
func (c *Config) validateWorkflows(ps *problems) {
	for _, name := range sortedKeys(c.Workflows) {
		w := c.Workflows[name]
		path := "workflows." + name
		if !namePattern.MatchString(name) {
			ps.add(path, "a workflow name must be %s", nameRule)
		}
		if w.Name != "" && w.Name != name {
			ps.add(path+".name", "is %q, but the workflow is declared as %q", w.Name, name)
		}
		c.checkWorkflow(ps, path, &w)
		c.Workflows[name] = w
	}
	for _, name := range sortedKeys(c.WorkflowResilience.Breakers) {
		b := c.WorkflowResilience.Breakers[name]
		path := "workflow_resilience.breakers." + name
		if !namePattern.MatchString(name) {
			ps.add(path, "a breaker name must be %s", nameRule)
		}
		if b.FailureThreshold < 0 {
			ps.add(path+".failure_threshold", "must not be negative")
		}
		if b.RecoveryTimeout < 0 {
			ps.add(path+".recovery_timeout", "must not be negative")
		}
		if b.HalfOpenProbes < 0 {
			ps.add(path+".half_open_probes", "must not be negative")
		}
	}
	for _, name := range sortedKeys(c.WorkflowResilience.RateLimits) {
		r := c.WorkflowResilience.RateLimits[name]
		path := "workflow_resilience.rate_limits." + name
		if !namePattern.MatchString(name) {
			ps.add(path, "a rate limit name must be %s", nameRule)
		}
		if r.PerSecond <= 0 {
			ps.add(path+".per_second", "must be positive")
		}
		if r.Burst < 0 {
			ps.add(path+".burst", "must not be negative")
		}
	}
	if c.WorkflowCache.LocalEntries < 1 {
		ps.add("workflow_cache.local_entries", "must be at least 1")
	}
}

// wfCheck checks one workflow.
type wfCheck struct {
	c      *Config
	ps     *problems
	params map[string]bool // declared parameters; nil when none are
	// cycleInputs are, per node, the inputs that cycles feed.
	cycleInputs map[string][]string
}

// refScope is what a reference may start with besides a node ID and
// params: the node's own inputs, and in map bodies and transaction steps
// the names defined there.
type refScope struct {
	local map[string]bool
	body  bool // item and index are defined
	step  int  // index of the transaction step, or -1
}

func (c *Config) checkWorkflow(ps *problems, path string, w *Workflow) {
	k := &wfCheck{c: c, ps: ps, cycleInputs: map[string][]string{}}
	if w.Database == "" {
		w.Database = DefaultWorkflowDatabase
	}
	if w.User == "" {
		w.User = DefaultWorkflowUser
	}
	if w.MaxConcurrency < 0 {
		ps.add(join(path, "max_concurrency"), "must not be negative")
	}
	if w.Timeout < 0 {
		ps.add(join(path, "timeout"), "must not be negative")
	}
	if w.Params != nil {
		k.params = map[string]bool{}
	}
	for i, p := range w.Params {
		pp := fmt.Sprintf("%s[%d]", join(path, "params"), i)
		switch {
		case !namePattern.MatchString(p):
			ps.add(pp, "a parameter name must be %s; got %q", nameRule, p)
		case k.params[p]:
			ps.add(pp, "parameter %q is listed twice", p)
		}
		k.params[p] = true
	}
	k.cycles(join(path, "cycles"), w.Cycles)
	if len(w.Nodes) == 0 {
		ps.add(join(path, "nodes"), "a workflow needs at least one node")
	}
	first := map[string]int{}
	for i := range w.Nodes {
		n := &w.Nodes[i]
		np := fmt.Sprintf("%s[%d]", join(path, "nodes"), i)
		if j, dup := first[n.ID]; dup && n.ID != "" {
			ps.add(np+".id", "duplicate node ID %q (also nodes[%d])", n.ID, j)
		} else {
			first[n.ID] = i
		}
		k.node(np, n, nil)
	}
}

func (k *wfCheck) cycles(path string, cs []WorkflowCycle) {
	names := map[string]bool{}
	for i, cy := range cs {
		cp := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case cy.Name == "":
			k.ps.add(cp+".name", "required")
		case !namePattern.MatchString(cy.Name):
			k.ps.add(cp+".name", "must be %s; got %q", nameRule, cy.Name)
		case names[cy.Name]:
			k.ps.add(cp+".name", "cycle %q is declared twice", cy.Name)
		}
		names[cy.Name] = true
		if cy.From == "" {
			k.ps.add(cp+".from", "required: the reference (node.path) whose value goes back")
		} else {
			k.nodeRef(cp+".from", cy.From)
		}
		if cy.To == "" {
			k.ps.add(cp+".to", "required: the node the value goes back to")
		}
		switch {
		case cy.Input == "":
			k.ps.add(cp+".input", "required: the input of to that the value feeds")
		case !namePattern.MatchString(cy.Input) || slices.Contains(reservedNames, cy.Input):
			k.ps.add(cp+".input", "an input name must be %s, and not one of %s; got %q", nameRule, strings.Join(reservedNames, ", "), cy.Input)
		default:
			k.cycleInputs[cy.To] = append(k.cycleInputs[cy.To], cy.Input)
		}
		if cy.MaxIterations < 1 {
			k.ps.add(cp+".max_iterations", "required: at least 1")
		}
		if cy.Until != "" {
			k.nodeRef(cp+".until", cy.Until)
		}
	}
}

// nodeRef checks a reference that must point into a node's output.
func (k *wfCheck) nodeRef(path, ref string) {
	if !k.refSyntax(path, ref) {
		return
	}
	root, _, _ := strings.Cut(ref, ".")
	if slices.Contains(reservedNames, root) {
		k.ps.add(path, "must refer to a node's output (node.path), not %s", root)
	}
}

// refSyntax checks that ref is a dotted path without empty segments.
func (k *wfCheck) refSyntax(path, ref string) bool {
	if ref == "" {
		k.ps.add(path, "must not be empty")
		return false
	}
	if slices.Contains(strings.Split(ref, "."), "") {
		k.ps.add(path, "reference %q has an empty segment", ref)
		return false
	}
	return true
}

// ref checks one reference in scope sc.
func (k *wfCheck) ref(path, ref string, sc refScope) {
	if !k.refSyntax(path, ref) {
		return
	}
	segs := strings.Split(ref, ".")
	switch segs[0] {
	case "params":
		switch {
		case len(segs) == 1:
			k.ps.add(path, "names no parameter: write params.NAME")
		case k.params != nil && !k.params[segs[1]]:
			k.ps.add(path, "parameter %q is not among the workflow's params", segs[1])
		}
	case "item", "index":
		if !sc.body {
			k.ps.add(path, "%s is only defined in a map body", segs[0])
		} else if segs[0] == "index" && len(segs) > 1 {
			k.ps.add(path, "index is a number and has no path")
		}
	case "steps":
		if sc.step < 0 {
			k.ps.add(path, "steps is only defined in the args of a transaction step")
			return
		}
		if len(segs) == 1 {
			k.ps.add(path, "names no step: write steps.N…")
			return
		}
		n, err := strconv.Atoi(segs[1])
		switch {
		case err != nil || n < 0:
			k.ps.add(path, "steps.%s is not a step number", segs[1])
		case n >= sc.step:
			k.ps.add(path, "steps.%d has not run when step %d runs", n, sc.step)
		}
	}
}

// node checks node n at path, filling in its defaults. outer is the scope
// of the map node whose body n is, or nil for a node of the graph.
func (k *wfCheck) node(path string, n *WorkflowNode, outer *refScope) {
	body := outer != nil
	if !body {
		switch {
		case n.ID == "":
			k.ps.add(path+".id", "required")
		case !namePattern.MatchString(n.ID):
			k.ps.add(path+".id", "must be %s; got %q", nameRule, n.ID)
		case slices.Contains(reservedNames, n.ID):
			k.ps.add(path+".id", "%q is reserved (%s start references)", n.ID, strings.Join(reservedNames, ", "))
		}
	}
	extra, known := kindKeys[n.Kind]
	switch {
	case n.Kind == "":
		k.ps.add(path+".kind", "required: sql, http, cache, map, switch or merge")
		return
	case !known:
		k.ps.add(path+".kind", "must be sql, http, cache, map, switch or merge; got %q", n.Kind)
		return
	case body && n.Kind != KindSQL && n.Kind != KindHTTP:
		k.ps.add(path+".kind", "a map body is a sql or http node; got %q", n.Kind)
		return
	}
	k.keys(path, n, extra, body)

	sc := refScope{local: map[string]bool{}, step: -1}
	if body {
		sc.body = true
		for name := range outer.local {
			sc.local[name] = true
		}
	}
	for _, in := range k.cycleInputs[n.ID] {
		sc.local[in] = true
	}
	for _, b := range n.Inputs {
		ip := join(path, "inputs."+b.Name)
		if !namePattern.MatchString(b.Name) || slices.Contains(reservedNames, b.Name) {
			k.ps.add(ip, "an input name must be %s, and not one of %s", nameRule, strings.Join(reservedNames, ", "))
		}
		// An input's own reference is resolved outside the node.
		k.ref(ip, b.Ref, refScope{local: outerLocal(outer), body: body, step: -1})
		sc.local[b.Name] = true
	}
	for i, a := range n.After {
		if a == "" {
			k.ps.add(fmt.Sprintf("%s.after[%d]", path, i), "must not be empty")
		}
	}
	k.options(path, n, sc)

	switch n.Kind {
	case KindSQL:
		k.sql(path, n, sc)
	case KindHTTP:
		k.http(path, n, sc)
	case KindCache:
		k.cacheNode(path, n, sc)
	case KindMap:
		k.mapNode(path, n, sc)
	case KindSwitch:
		k.switchNode(path, n, sc)
	case KindMerge:
		k.merge(path, n)
	}
}

func outerLocal(outer *refScope) map[string]bool {
	if outer == nil {
		return nil
	}
	return outer.local
}

// keys reports the keys that are set but do not apply to n's kind.
func (k *wfCheck) keys(path string, n *WorkflowNode, extra []string, body bool) {
	v := reflect.ValueOf(n).Elem()
	for _, key := range sortedKeys(nodeFields) {
		if v.Field(nodeFields[key]).IsZero() {
			continue
		}
		if why, bad := bodyForbiddenKeys[key]; body && bad {
			k.ps.add(join(path, key), "not allowed in a map body: %s", why)
			continue
		}
		if slices.Contains(extra, key) || (slices.Contains(commonNodeKeys, key) && !(key == "cache" && n.Kind == KindCache)) {
			continue
		}
		k.ps.add(join(path, key), "not used by a %s node", n.Kind)
	}
}

func (k *wfCheck) options(path string, n *WorkflowNode, sc refScope) {
	if r := n.Retry; r != nil {
		if r.MaxAttempts < 0 {
			k.ps.add(path+".retry.max_attempts", "must not be negative")
		}
		if r.InitialDelay < 0 {
			k.ps.add(path+".retry.initial_delay", "must not be negative")
		}
		if r.MaxDelay < 0 {
			k.ps.add(path+".retry.max_delay", "must not be negative")
		}
		if r.Multiplier != 0 && r.Multiplier < 1 {
			k.ps.add(path+".retry.multiplier", "must be at least 1")
		}
		if r.Jitter > 1 {
			k.ps.add(path+".retry.jitter", "must be at most 1")
		}
	}
	if n.Timeout < 0 {
		k.ps.add(path+".timeout", "must not be negative")
	}
	if n.Breaker != "" {
		if _, ok := k.c.WorkflowResilience.Breakers[n.Breaker]; !ok {
			k.ps.add(path+".breaker", "unknown breaker %q; declare it under workflow_resilience.breakers%s",
				n.Breaker, declared(k.c.WorkflowResilience.Breakers))
		}
	}
	if n.RateLimit != "" {
		if _, ok := k.c.WorkflowResilience.RateLimits[n.RateLimit]; !ok {
			k.ps.add(path+".rate_limit", "unknown rate limit %q; declare it under workflow_resilience.rate_limits%s",
				n.RateLimit, declared(k.c.WorkflowResilience.RateLimits))
		}
	}
	if ch := n.Cache; ch != nil {
		k.store(path+".cache.store", &ch.Store)
		if ch.TTL < 0 {
			k.ps.add(path+".cache.ttl", "must not be negative")
		}
		for i, r := range ch.Key {
			k.ref(fmt.Sprintf("%s.cache.key[%d]", path, i), r, sc)
		}
	}
}

// declared lists the declared names for an error message.
func declared[V any](m map[string]V) string {
	if len(m) == 0 {
		return " (none are declared)"
	}
	return " (declared: " + strings.Join(sortedKeys(m), ", ") + ")"
}

func (k *wfCheck) store(path string, s *string) {
	switch *s {
	case "":
		*s = CacheStoreLocal
	case CacheStoreLocal:
	case CacheStoreRedis:
		if k.c.WorkflowCache.RedisAddr == "" {
			k.ps.add(path, "redis needs workflow_cache.redis_addr")
		}
	default:
		k.ps.add(path, "must be local or redis; got %q", *s)
	}
}

func (k *wfCheck) sql(path string, n *WorkflowNode, sc refScope) {
	if n.Mode == "" {
		n.Mode = SQLModeQuery
	}
	switch n.Mode {
	case SQLModeQuery, SQLModeExec:
		if strings.TrimSpace(n.SQL) == "" {
			k.ps.add(path+".sql", "required for a sql node in mode %s", n.Mode)
		}
		if n.Steps != nil {
			k.ps.add(path+".steps", "only in mode transaction")
		}
		for i, a := range n.Args {
			k.ref(fmt.Sprintf("%s.args[%d]", path, i), a, sc)
		}
		if n.ExpectRows != nil && *n.ExpectRows < 0 {
			k.ps.add(path+".expect_rows", "must not be negative")
		}
	case SQLModeTransaction:
		for _, key := range []string{"sql", "args", "expect_rows"} {
			if !reflect.ValueOf(n).Elem().Field(nodeFields[key]).IsZero() {
				k.ps.add(join(path, key), "not used in mode transaction: put the statements in steps")
			}
		}
		if len(n.Steps) == 0 {
			k.ps.add(path+".steps", "required in mode transaction: at least one statement")
		}
		for i, s := range n.Steps {
			sp := fmt.Sprintf("%s.steps[%d]", path, i)
			if strings.TrimSpace(s.SQL) == "" {
				k.ps.add(sp+".sql", "required")
			}
			ssc := sc
			ssc.step = i
			for j, a := range s.Args {
				k.ref(fmt.Sprintf("%s.args[%d]", sp, j), a, ssc)
			}
			if s.ExpectRows != nil && *s.ExpectRows < 0 {
				k.ps.add(sp+".expect_rows", "must not be negative")
			}
		}
	default:
		k.ps.add(path+".mode", "must be query, exec or transaction; got %q", n.Mode)
	}
}

func (k *wfCheck) http(path string, n *WorkflowNode, sc refScope) {
	hasInput := func(name string) bool {
		return slices.ContainsFunc(n.Inputs, func(b Binding) bool { return b.Name == name })
	}
	if n.URL == "" {
		if !hasInput("url") {
			k.ps.add(path+".url", "required (or bind an input url)")
		}
	} else if u, err := url.Parse(n.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		k.ps.add(path+".url", "must be an http:// or https:// URL; got %q", n.URL)
	}
	if n.Method != "" && strings.IndexFunc(n.Method, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
		k.ps.add(path+".method", "must be an upper-case HTTP method such as GET or POST; got %q", n.Method)
	}
	for _, name := range sortedKeys(n.Headers) {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			k.ps.add(path+".headers", "%q is not a header name", name)
		}
	}
	switch {
	case n.Body.Node != nil:
		k.ps.add(path+".body", "an http node's body is a reference to the value to send, not a node")
	case n.Body.Ref != "":
		if hasInput("body") {
			k.ps.add(path+".body", "the input body is bound in inputs too")
		}
		k.ref(path+".body", n.Body.Ref, refScope{local: sc.local, body: sc.body, step: -1})
	}
}

func (k *wfCheck) cacheNode(path string, n *WorkflowNode, sc refScope) {
	switch n.Op {
	case CacheOpGet:
		if n.Value != "" {
			k.ps.add(path+".value", "only a set stores a value")
		}
	case CacheOpSet:
		if n.Value == "" {
			k.ps.add(path+".value", "required: the reference to the value to store")
		} else {
			k.ref(path+".value", n.Value, sc)
		}
	case "":
		k.ps.add(path+".op", "required: get or set")
	default:
		k.ps.add(path+".op", "must be get or set; got %q", n.Op)
	}
	k.store(path+".store", &n.Store)
	if len(n.Key) == 0 {
		k.ps.add(path+".key", "required: the references the key is made of")
	}
	for i, r := range n.Key {
		k.ref(fmt.Sprintf("%s.key[%d]", path, i), r, sc)
	}
	if n.TTL < 0 {
		k.ps.add(path+".ttl", "must not be negative")
	}
}

func (k *wfCheck) mapNode(path string, n *WorkflowNode, sc refScope) {
	if n.Items == "" {
		k.ps.add(path+".items", "required: the reference to the list of items")
	} else {
		k.ref(path+".items", n.Items, sc)
	}
	switch {
	case n.Body.Ref != "":
		k.ps.add(path+".body", "a map's body is a node (a mapping with kind sql or http), not a reference")
	case n.Body.Node == nil:
		k.ps.add(path+".body", "required: the node run for each item (kind sql or http)")
	default:
		// The body sees the map's inputs, besides item and index.
		outer := refScope{local: map[string]bool{}, body: true, step: -1}
		for name := range sc.local {
			outer.local[name] = true
		}
		k.node(path+".body", n.Body.Node, &outer)
	}
	if n.MaxWorkers < 0 {
		k.ps.add(path+".max_workers", "must not be negative")
	}
	if n.BatchSize < 0 {
		k.ps.add(path+".batch_size", "must not be negative")
	}
	if n.TimeoutPerItem < 0 {
		k.ps.add(path+".timeout_per_item", "must not be negative")
	}
}

func (k *wfCheck) switchNode(path string, n *WorkflowNode, sc refScope) {
	if n.On == "" {
		k.ps.add(path+".on", "required: the reference to route on")
	} else {
		k.ref(path+".on", n.On, sc)
	}
	if len(n.Cases) == 0 && n.Default == "" {
		k.ps.add(path+".cases", "a switch needs cases or a default")
	}
	for _, v := range sortedKeys(n.Cases) {
		if b := n.Cases[v]; !namePattern.MatchString(b) {
			k.ps.add(path+".cases."+v, "a branch name must be %s; got %q", nameRule, b)
		}
	}
	if n.Default != "" && !namePattern.MatchString(n.Default) {
		k.ps.add(path+".default", "a branch name must be %s; got %q", nameRule, n.Default)
	}
	for _, b := range n.Inputs {
		if b.Name == "on" {
			k.ps.add(path+".inputs.on", "on is the input the switch routes on; choose another name")
		}
	}
}

func (k *wfCheck) merge(path string, n *WorkflowNode) {
	if n.Mode == "" {
		n.Mode = MergeModeFirst
	}
	switch n.Mode {
	case MergeModeFirst, MergeModeMap, MergeModeList, MergeModeConcat:
	default:
		k.ps.add(path+".mode", "must be first, map, list or concat; got %q", n.Mode)
	}
	if len(n.Inputs) == 0 {
		k.ps.add(path+".inputs", "required: the references a merge combines")
	}
}
