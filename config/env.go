package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	envPrefix = "KPROXY_"
	// envTestPrefix marks variables the test harness owns; Load ignores them.
	envTestPrefix = "KPROXY_TEST_"
)

// envSetter applies one variable's value to c.
type envSetter func(c *Config, value string) error

// envVar is one KPROXY_* variable.
type envVar struct {
	// paths are the yaml paths whose names map to the variable; more than
	// one only for KPROXY_POOL_MODE.
	paths []string
	set   envSetter
}

// envVars returns every KPROXY_* variable Load knows, by name.
func envVars() map[string]*envVar {
	vars := map[string]*envVar{}
	define := func(path string, set envSetter) {
		name := envName(path)
		if v, ok := vars[name]; ok {
			v.paths = append(v.paths, path)
			v.set = set
			return
		}
		vars[name] = &envVar{paths: []string{path}, set: set}
	}
	var walk func(t reflect.Type, index []int, path string)
	walk = func(t reflect.Type, index []int, path string) {
		for name, i := range yamlFields(t) {
			f := t.Field(i)
			idx := append(slices.Clone(index), i)
			p := join(path, name)
			switch {
			case f.Type.Kind() == reflect.Map || f.Type.Kind() == reflect.Slice:
				// databases and users are file-only; replicas is special.
			case f.Type.Kind() == reflect.Struct && f.Type != durationType:
				walk(f.Type, idx, p)
			default:
				define(p, func(c *Config, value string) error {
					return setFromString(reflect.ValueOf(c).Elem().FieldByIndex(idx), value)
				})
			}
		}
	}
	walk(reflect.TypeFor[Config](), nil, "")

	// pool_mode and pool.mode share a name; the variable means the default
	// mode, so it must also beat a pool.mode from the file.
	vars[envName("pool_mode")].set = func(c *Config, value string) error {
		c.PoolMode = PoolMode(value)
		c.Pool.Mode = ""
		return nil
	}
	define("primary", func(c *Config, value string) error {
		b, err := ParseBackend(value)
		if err != nil {
			return err
		}
		c.Primary = b
		return nil
	})
	define("replicas", func(c *Config, value string) error {
		var rs []Backend
		for item := range strings.SplitSeq(value, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			b, err := ParseBackend(item)
			if err != nil {
				return err
			}
			rs = append(rs, b)
		}
		c.Replicas = rs
		return nil
	})
	return vars
}

// envName is the variable for yaml path p: "pool.max_connections" is
// KPROXY_POOL_MAX_CONNECTIONS.
func envName(p string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(p, ".", "_"))
}

// setFromString parses s into the scalar field v.
func setFromString(v reflect.Value, s string) error {
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf(`must be a duration like "5s" or "1m30s", not %q`, s)
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("must be true or false, not %q", s)
		}
		v.SetBool(b)
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("must be an integer, not %q", s)
		}
		v.SetInt(i)
	case v.Kind() == reflect.Uint16:
		i, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return fmt.Errorf("must be a port number from 1 to 65535, not %q", s)
		}
		v.SetUint(i)
	default:
		panic(fmt.Sprintf("config: no environment decoding for %s", v.Type()))
	}
	return nil
}

// applyEnv overlays the KPROXY_* entries of environ onto c. Whole-backend
// variables (KPROXY_PRIMARY, KPROXY_REPLICAS) go first so that
// KPROXY_PRIMARY_PORT can refine KPROXY_PRIMARY; the rest go in name order.
func applyEnv(c *Config, environ []string, ps *problems) {
	values := map[string]string{}
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix) || strings.HasPrefix(name, envTestPrefix) {
			continue
		}
		values[name] = value
	}
	vars := envVars()
	names := sortedKeys(values)
	first := func(name string) bool { return name == envName("primary") || name == envName("replicas") }
	slices.SortStableFunc(names, func(a, b string) int {
		switch {
		case first(a) && !first(b):
			return -1
		case first(b) && !first(a):
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		v, ok := vars[name]
		if !ok {
			ps.add(name, "unknown environment variable")
			continue
		}
		if err := v.set(c, values[name]); err != nil {
			ps.add(name, "%v", err)
		}
	}
}
