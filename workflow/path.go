package workflow

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// Lookuper is implemented by outputs that resolve path segments themselves,
// without reflection: a SQL result that answers "rows" and "row_count", a
// list type that answers "0", "1", ….
type Lookuper interface {
	Lookup(key string) (any, bool)
}

// segment is one step of a dotted path, split and parsed at Build time.
type segment struct {
	key   string
	index int // key as a list index, or -1 when it is not one
}

// parsePath splits a dotted path ("rows.0.id"). The empty path is the whole
// value; empty segments ("a..b", ".a") are an error.
func parsePath(p string) ([]segment, error) {
	if p == "" {
		return nil, nil
	}
	parts := strings.Split(p, ".")
	segs := make([]segment, len(parts))
	for i, part := range parts {
		if part == "" {
			return nil, fmt.Errorf("path %q has an empty segment", p)
		}
		segs[i] = segment{key: part, index: -1}
		if n, err := strconv.Atoi(part); err == nil && n >= 0 {
			segs[i].index = n
		}
	}
	return segs, nil
}

// Lookup resolves a dotted path in v: map keys, list indexes, Lookuper keys,
// and struct fields by JSON name or field name. The empty path returns v.
// A path that does not resolve is a *PathError.
func Lookup(v any, path string) (any, error) {
	segs, err := parsePath(path)
	if err != nil {
		return nil, &PathError{Path: path, Reason: err.Error()}
	}
	return resolvePath(v, segs)
}

// resolvePath walks segs from v. The common shapes (maps and lists of any,
// Lookuper) take no reflection.
func resolvePath(v any, segs []segment) (any, error) {
	for i, s := range segs {
		next, reason := step(v, s)
		if reason != "" {
			return nil, pathError(segs, i, reason)
		}
		v = next
	}
	return v, nil
}

// step resolves one segment; a non-empty reason is why it did not.
func step(v any, s segment) (any, string) {
	switch x := v.(type) {
	case map[string]any:
		if r, ok := x[s.key]; ok {
			return r, ""
		}
		return nil, fmt.Sprintf("no key %q", s.key)
	case []any:
		return index(x, s)
	case []map[string]any:
		return index(x, s)
	case Lookuper:
		if r, ok := x.Lookup(s.key); ok {
			return r, ""
		}
		return nil, fmt.Sprintf("no key %q in %T", s.key, v)
	case map[string]string:
		if r, ok := x[s.key]; ok {
			return r, ""
		}
		return nil, fmt.Sprintf("no key %q", s.key)
	case []string:
		return index(x, s)
	case nil:
		return nil, fmt.Sprintf("cannot look up %q in nil", s.key)
	}
	return reflectStep(reflect.ValueOf(v), s)
}

func index[E any](list []E, s segment) (any, string) {
	if s.index < 0 {
		return nil, fmt.Sprintf("%q is not a list index", s.key)
	}
	if s.index >= len(list) {
		return nil, fmt.Sprintf("index %d out of range (length %d)", s.index, len(list))
	}
	return list[s.index], ""
}

// reflectStep resolves a segment in any other map, list, struct or pointer.
func reflectStep(rv reflect.Value, s segment) (any, string) {
	for rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface {
		if rv.IsNil() {
			return nil, fmt.Sprintf("cannot look up %q in nil", s.key)
		}
		rv = rv.Elem()
	}
	switch rv.Kind() {
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return nil, fmt.Sprintf("cannot look up %q in %s", s.key, rv.Type())
		}
		r := rv.MapIndex(reflect.ValueOf(s.key).Convert(rv.Type().Key()))
		if !r.IsValid() {
			return nil, fmt.Sprintf("no key %q", s.key)
		}
		return r.Interface(), ""
	case reflect.Slice, reflect.Array:
		if s.index < 0 {
			return nil, fmt.Sprintf("%q is not a list index", s.key)
		}
		if s.index >= rv.Len() {
			return nil, fmt.Sprintf("index %d out of range (length %d)", s.index, rv.Len())
		}
		return rv.Index(s.index).Interface(), ""
	case reflect.Struct:
		if f, ok := structField(rv, s.key); ok {
			return f.Interface(), ""
		}
		return nil, fmt.Sprintf("no field %q in %s", s.key, rv.Type())
	}
	return nil, fmt.Sprintf("cannot look up %q in %s", s.key, rv.Type())
}

// structField finds an exported field by JSON name, then by name, then by
// name ignoring case.
func structField(rv reflect.Value, key string) (reflect.Value, bool) {
	t := rv.Type()
	fold := -1
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		if tag == key || (tag == "" && f.Name == key) {
			return rv.Field(i), true
		}
		if fold < 0 && tag == "" && strings.EqualFold(f.Name, key) {
			fold = i
		}
	}
	if fold >= 0 {
		return rv.Field(fold), true
	}
	return reflect.Value{}, false
}

func pathError(segs []segment, at int, reason string) *PathError {
	keys := make([]string, len(segs))
	for i, s := range segs {
		keys[i] = s.key
	}
	return &PathError{Path: strings.Join(keys, "."), At: strings.Join(keys[:at], "."), Reason: reason}
}
