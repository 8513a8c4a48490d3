package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load returns Default overlaid with the YAML file at path (skipped when path
// is empty) and then with the KPROXY_* variables in environ ("KEY=value"
// entries, as from os.Environ; a later entry wins), validated. Every problem
// in the file, the environment and the result is reported together as a
// *ValidationError; the Config returned alongside it is the partly applied
// one and must not be used. A file that cannot be read or parsed as YAML is
// reported alone, wrapping the underlying error.
func Load(path string, environ []string) (Config, error) {
	c, err := Read(path, environ)
	return c, Join(err, c.Validate())
}

// Read is Load without the final Validate, for callers that apply further
// settings (command-line flags) first. Its problems are reported as a
// *ValidationError, to be joined with Validate's by Join.
func Read(path string, environ []string) (Config, error) {
	c := Default()
	var ps problems
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		if err := decodeYAML(data, &c, &ps); err != nil {
			return c, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	applyEnv(&c, environ, &ps)
	return c, problemError(ps)
}

// Join combines errors from Read and Validate: the problems of every
// *ValidationError are reported together, sorted; any other error is
// returned alone, as it means the configuration could not be read at all.
func Join(errs ...error) error {
	var ps problems
	for _, err := range errs {
		if err == nil {
			continue
		}
		var ve *ValidationError
		if !errors.As(err, &ve) {
			return err
		}
		ps = append(ps, ve.Problems...)
	}
	return problemError(ps)
}

// maxYAMLSteps bounds the work of walking one file, so that aliases and merge
// keys cannot make a small file expensive. Real files take a few steps per
// line.
const maxYAMLSteps = 1 << 20

// decodeYAML overlays the YAML document in data onto c. It returns an error
// only when data is not YAML; problems with the content go to ps.
func decodeYAML(data []byte, c *Config, ps *problems) error {
	return decodeYAMLInto(data, reflect.ValueOf(c).Elem(), ps)
}

// decodeYAMLInto is decodeYAML for any struct v.
func decodeYAMLInto(data []byte, v reflect.Value, ps *problems) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: defaults
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return err
		}
		ps.add("", "the file holds more than one YAML document (line %d)", extra.Line)
	}
	d := &walker{ps: ps, steps: maxYAMLSteps, merging: map[*yaml.Node]bool{}}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil
		}
		root = root.Content[0]
	}
	d.value(root, v, "")
	return nil
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	backendType  = reflect.TypeFor[Backend]()
	bindingsType = reflect.TypeFor[Bindings]()
	bodyType     = reflect.TypeFor[Body]()
)

// walker decodes a yaml.Node tree into a value by its yaml tags, recording a
// Problem with the key path for everything it cannot take.
type walker struct {
	ps *problems
	// steps is the work left; at zero the walk stops.
	steps int
	// merging holds the mappings being merged, to refuse merge cycles.
	merging map[*yaml.Node]bool
	// inBody is set while a map node's body node is decoded: that node
	// cannot hold another, which also stops aliases from nesting bodies
	// without end.
	inBody bool
}

func (d *walker) add(path string, n *yaml.Node, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if n != nil && n.Line > 0 {
		msg += fmt.Sprintf(" (line %d)", n.Line)
	}
	*d.ps = append(*d.ps, Problem{Path: path, Message: msg})
}

// step spends one unit of work and reports whether the walk may go on.
func (d *walker) step(n *yaml.Node) bool {
	d.steps--
	if d.steps == 0 {
		d.add("", n, "the file is too complex to read (too many aliases or merges?)")
	}
	return d.steps > 0
}

// deref follows aliases; it returns nil for a dangling one.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 100 {
			return nil
		}
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	default:
		return "an unexpected node"
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// value decodes n into v. A null leaves v as it was.
func (d *walker) value(n *yaml.Node, v reflect.Value, path string) {
	n = deref(n)
	if n == nil || !d.step(n) || isNull(n) {
		return
	}
	switch {
	case v.Type() == durationType:
		d.duration(n, v, path)
		return
	case v.Type() == backendType && n.Kind == yaml.ScalarNode:
		s, ok := d.text(n, path)
		if !ok {
			return
		}
		b, err := ParseBackend(s)
		if err != nil {
			d.add(path, n, "%v", err)
			return
		}
		v.Set(reflect.ValueOf(b))
		return
	case v.Type() == bindingsType:
		d.bindings(n, v, path)
		return
	case v.Type() == bodyType:
		d.body(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Map:
		d.mapping(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.String:
		if s, ok := d.text(n, path); ok {
			v.SetString(s)
		}
	case reflect.Int, reflect.Int64:
		d.integer(n, v, path)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.add(path, n, "must be true or false, not %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Uint16:
		d.port(n, v, path)
	case reflect.Float64:
		d.float(n, v, path)
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.value(n, v.Elem(), path)
	case reflect.Interface:
		d.anyValue(n, v, path)
	default:
		panic(fmt.Sprintf("config: no YAML decoding for %s at %s", v.Type(), path))
	}
}

// text returns the string form of scalar n. Like the yaml package, it takes
// any scalar (password: 1234 is the string "1234").
func (d *walker) text(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.add(path, n, "must be a string, not %s", describe(n))
		return "", false
	}
	if n.ShortTag() == "!!binary" {
		b, err := base64.StdEncoding.DecodeString(n.Value)
		if err != nil {
			d.add(path, n, "bad !!binary value")
			return "", false
		}
		return string(b), true
	}
	return n.Value, true
}

func (d *walker) integer(n *yaml.Node, v reflect.Value, path string) {
	var i int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil || v.OverflowInt(i) {
		d.add(path, n, "must be an integer, not %s", describe(n))
		return
	}
	v.SetInt(i)
}

func (d *walker) float(n *yaml.Node, v reflect.Value, path string) {
	var f float64
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&f) != nil ||
		math.IsNaN(f) || math.IsInf(f, 0) {
		d.add(path, n, "must be a number, not %s", describe(n))
		return
	}
	v.SetFloat(f)
}

// anyValue decodes n as plain data: strings, numbers, booleans, null, lists
// and mappings with string keys, as JSON would hold them.
func (d *walker) anyValue(n *yaml.Node, v reflect.Value, path string) {
	var x any
	if err := n.Decode(&x); err != nil {
		d.add(path, n, "%v", err)
		return
	}
	x, err := plainValue(x)
	if err != nil {
		d.add(path, n, "%v", err)
		return
	}
	if x != nil {
		v.Set(reflect.ValueOf(x))
	}
}

// plainValue turns what the yaml package decodes into values that encode as
// JSON: mappings with other than string keys get their keys as text.
func plainValue(x any) (any, error) {
	switch t := x.(type) {
	case map[string]any:
		for k, e := range t {
			p, err := plainValue(e)
			if err != nil {
				return nil, err
			}
			t[k] = p
		}
		return t, nil
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			p, err := plainValue(e)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = p
		}
		return m, nil
	case []any:
		for i, e := range t {
			p, err := plainValue(e)
			if err != nil {
				return nil, err
			}
			t[i] = p
		}
		return t, nil
	case float64:
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil, fmt.Errorf("%v cannot be represented in JSON", t)
		}
	}
	return x, nil
}

// bindings decodes a mapping of input name to reference, keeping its order.
func (d *walker) bindings(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.add(path, n, "must be a mapping of input names to references, not %s", describe(n))
		return
	}
	var bs Bindings
	for _, kv := range d.pairs(n, path) {
		if isNull(kv.key) {
			d.add(path, kv.key, "a name must not be null")
			continue
		}
		key := join(path, kv.key.Value)
		val := deref(kv.value)
		if val == nil || !d.step(val) {
			continue
		}
		if val.Kind != yaml.ScalarNode || isNull(val) {
			d.add(key, val, "must be a reference such as fetch.rows or params.id, not %s", describe(val))
			continue
		}
		bs = append(bs, Binding{Name: kv.key.Value, Ref: val.Value})
	}
	v.Set(reflect.ValueOf(bs))
}

// body decodes a string as a reference and a mapping as a node.
func (d *walker) body(n *yaml.Node, v reflect.Value, path string) {
	switch n.Kind {
	case yaml.ScalarNode:
		v.Set(reflect.ValueOf(Body{Ref: n.Value}))
	case yaml.MappingNode:
		if d.inBody {
			d.add(path, n, "a map body's node cannot hold another node")
			return
		}
		d.inBody = true
		node := &WorkflowNode{}
		d.value(n, reflect.ValueOf(node).Elem(), path)
		d.inBody = false
		v.Set(reflect.ValueOf(Body{Node: node}))
	default:
		d.add(path, n, "must be a reference (http) or a node mapping (map), not %s", describe(n))
	}
}

func (d *walker) port(n *yaml.Node, v reflect.Value, path string) {
	var i int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil || i < 0 || i > 65535 {
		d.add(path, n, "must be a port number from 1 to 65535, not %s", describe(n))
		return
	}
	v.SetUint(uint64(i))
}

func (d *walker) duration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.ScalarNode {
		if dur, err := time.ParseDuration(n.Value); err == nil {
			v.SetInt(int64(dur))
			return
		}
	}
	d.add(path, n, `must be a duration like "5s" or "1m30s", not %s`, describe(n))
}

// yamlFields maps the yaml tag names of struct type t to field indexes.
func yamlFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = i
		}
	}
	return fields
}

func (d *walker) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.add(path, n, "must be a mapping, not %s", describe(n))
		return
	}
	fields := yamlFields(v.Type())
	for _, kv := range d.pairs(n, path) {
		key := join(path, kv.key.Value)
		i, ok := fields[kv.key.Value]
		if !ok {
			d.add(key, kv.key, "unknown key")
			continue
		}
		d.value(kv.value, v.Field(i), key)
	}
}

// mapping replaces map v with the entries of n, each decoded from the zero
// value of the map's element type.
func (d *walker) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.add(path, n, "must be a mapping, not %s", describe(n))
		return
	}
	pairs := d.pairs(n, path)
	m := reflect.MakeMapWithSize(v.Type(), len(pairs))
	for _, kv := range pairs {
		if isNull(kv.key) {
			d.add(path, kv.key, "a name must not be null")
			continue
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		d.value(kv.value, elem, join(path, kv.key.Value))
		m.SetMapIndex(reflect.ValueOf(kv.key.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

// sequence replaces slice v with the items of n.
func (d *walker) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.add(path, n, "must be a sequence, not %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.value(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
}

type keyValue struct {
	key, value *yaml.Node
}

// pairs returns the entries of mapping n with "<<" merge keys resolved: keys
// written in n win over merged ones, and among merged mappings the earlier
// wins. Duplicate keys written in n are problems.
func (d *walker) pairs(n *yaml.Node, path string) []keyValue {
	var out, merges []keyValue
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := deref(n.Content[i])
		if k == nil || !d.step(k) {
			return out
		}
		if k.Kind != yaml.ScalarNode {
			d.add(path, k, "a key must be a scalar, not %s", describe(k))
			continue
		}
		if k.Value == "<<" && k.ShortTag() == "!!merge" {
			merges = append(merges, keyValue{k, n.Content[i+1]})
			continue
		}
		if seen[k.Value] {
			d.add(join(path, k.Value), k, "duplicate key")
			continue
		}
		seen[k.Value] = true
		out = append(out, keyValue{k, n.Content[i+1]})
	}
	for _, m := range merges {
		from := deref(m.value)
		if from == nil {
			continue
		}
		sources := []*yaml.Node{from}
		if from.Kind == yaml.SequenceNode {
			sources = from.Content
		}
		for _, src := range sources {
			src = deref(src)
			if src == nil {
				continue
			}
			if src.Kind != yaml.MappingNode {
				d.add(path, m.key, "a merge (<<) takes a mapping or a sequence of mappings, not %s", describe(src))
				continue
			}
			if d.merging[src] {
				d.add(path, m.key, "a merge (<<) includes itself")
				continue
			}
			d.merging[src] = true
			for _, kv := range d.pairs(src, path) {
				if !seen[kv.key.Value] {
					seen[kv.key.Value] = true
					out = append(out, kv)
				}
			}
			delete(d.merging, src)
		}
	}
	return out
}
