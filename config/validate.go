package config

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultPort is the Postgres port a Backend with Port 0 uses.
const DefaultPort = 5432

// minMaxMessageBytes is the smallest MaxMessageBytes Validate accepts: below
// it, ordinary startup and authentication messages would be refused.
const minMaxMessageBytes = 1024

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Path is the yaml key path ("databases.app.pool.mode", "replicas[1].port")
	// or, for the environment, the variable name ("KPROXY_POOL_MODE").
	Path string
	// Message says what is wrong, without repeating Path.
	Message string
}

// String returns "path: message".
func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError lists every problem Load or Validate found.
type ValidationError struct {
	Problems []Problem
}

// Error lists the problems one per line, sorted by path.
func (e *ValidationError) Error() string {
	ps := slices.Clone(e.Problems)
	sortProblems(ps)
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func sortProblems(ps []Problem) {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Path, b.Path), cmp.Compare(a.Message, b.Message))
	})
}

// problemError sorts and de-duplicates ps and wraps them in a
// *ValidationError, or returns nil when there are none.
func problemError(ps []Problem) error {
	if len(ps) == 0 {
		return nil
	}
	ps = slices.Clone(ps)
	sortProblems(ps)
	return &ValidationError{Problems: slices.Compact(ps)}
}

// problems collects Problems.
type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Validate checks c and reports every problem at once as a
// *ValidationError. It fills in DefaultPort for backends with Port 0 and the
// workflows' defaults (database, user, modes, cache stores), and is meant to
// be called again after flags change c.
func (c *Config) Validate() error {
	var ps problems
	c.validateAddrs(&ps)
	c.validateBackends(&ps)
	c.validateModes(&ps)
	c.validateAuth(&ps)
	c.validatePools(&ps)
	c.validateRouting(&ps)
	c.validateWorkflows(&ps)

	if c.TLS.CertFile != "" && c.TLS.KeyFile == "" {
		ps.add("tls.key_file", "required when tls.cert_file is set")
	}
	if c.TLS.KeyFile != "" && c.TLS.CertFile == "" {
		ps.add("tls.cert_file", "required when tls.key_file is set")
	}
	switch c.BackendTLS.SSLMode {
	case "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		ps.add("backend_tls.sslmode", "must be one of disable, allow, prefer, require, verify-ca, verify-full; got %q", c.BackendTLS.SSLMode)
	}
	if c.ShutdownTimeout < 0 {
		ps.add("shutdown_timeout", "must not be negative")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		ps.add("log_level", "must be one of debug, info, warn, error; got %q", c.LogLevel)
	}
	if c.MaxMessageBytes < minMaxMessageBytes {
		ps.add("max_message_bytes", "must be at least %d", minMaxMessageBytes)
	}
	switch c.RelayEngine {
	case "goroutine", "loop":
	default:
		ps.add("relay_engine", "must be goroutine or loop; got %q", c.RelayEngine)
	}
	if c.EventLoops < 0 {
		ps.add("event_loops", "must not be negative")
	}
	return problemError(ps)
}

func (c *Config) validateAddrs(ps *problems) {
	if c.Listen == "" {
		ps.add("listen", "required")
	} else if err := checkListenAddr(c.Listen); err != nil {
		ps.add("listen", "%v", err)
	}
	if c.AdminListen != "" {
		if err := checkListenAddr(c.AdminListen); err != nil {
			ps.add("admin_listen", "%v", err)
		}
	}
}

// checkListenAddr accepts "host:port" with a numeric port; an empty host
// listens on every interface and port 0 picks a free port.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be host:port, got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port must be a number from 0 to 65535, got %q", port)
	}
	return nil
}

func (c *Config) validateBackends(ps *problems) {
	check := func(path string, b *Backend) {
		if b.Host == "" {
			ps.add(path+".host", "required")
		}
		if b.Port == 0 {
			b.Port = DefaultPort
		}
	}
	check("primary", &c.Primary)
	for i := range c.Replicas {
		check(fmt.Sprintf("replicas[%d]", i), &c.Replicas[i])
	}
}

func (c *Config) validateModes(ps *problems) {
	switch c.PoolMode {
	case PoolModeSession, PoolModeTransaction:
	case "":
		ps.add("pool_mode", "required: session or transaction")
	default:
		ps.add("pool_mode", "must be session or transaction, got %q", c.PoolMode)
	}
	c.forEachPool(func(path string, p Pool) {
		switch p.Mode {
		case "", PoolModeSession, PoolModeTransaction:
		default:
			ps.add(path+".mode", "must be session or transaction, got %q", p.Mode)
		}
	})
}

func (c *Config) validateAuth(ps *problems) {
	switch c.Auth.Method {
	case "", AuthTrust, AuthMD5, AuthSCRAM:
	default:
		ps.add("auth.method", "must be trust, md5 or scram-sha-256, got %q", c.Auth.Method)
	}
	method := c.EffectiveAuthMethod()
	for name, u := range c.Users {
		path := "users." + name
		if name == "" {
			ps.add("users", "user name must not be empty")
		}
		if u.SCRAMSecret != "" {
			if _, err := ParseSCRAMSecret(u.SCRAMSecret); err != nil {
				ps.add(path+".scram_secret", "%v", err)
			}
		}
		switch method {
		case AuthMD5:
			if u.Password == "" {
				ps.add(path+".password", "required with auth.method md5")
			}
		case AuthSCRAM:
			if u.Password == "" && u.SCRAMSecret == "" {
				ps.add(path, "needs password or scram_secret with auth.method scram-sha-256")
			}
		}
	}
}

func (c *Config) validateRouting(ps *problems) {
	r := c.Routing
	if r.MaxReplicaLagBytes < 0 {
		ps.add("routing.max_replica_lag_bytes", "must not be negative")
	}
	if r.MaxReplicaLag < 0 {
		ps.add("routing.max_replica_lag", "must not be negative")
	}
	if r.ReadYourWritesWait < 0 {
		ps.add("routing.read_your_writes_wait", "must not be negative")
	}
	if r.CheckPeriod <= 0 {
		ps.add("routing.check_period", "must be positive")
	}
	if r.MonitorUser == "" {
		ps.add("routing.monitor_user", "required")
	}
	if r.MonitorDatabase == "" {
		ps.add("routing.monitor_database", "required")
	}
	for i, f := range r.ReadOnlyFunctions {
		if strings.TrimSpace(f) == "" || strings.Count(f, ".") > 1 {
			ps.add(fmt.Sprintf("routing.read_only_functions[%d]", i), "must be a function name or schema.name")
		}
	}
}

func (c *Config) validatePools(ps *problems) {
	c.forEachPool(func(path string, p Pool) {
		for _, f := range []struct {
			name string
			n    int
		}{
			{"min_connections", p.MinConnections},
			{"max_connections", p.MaxConnections},
			{"prewarm_connections", p.PrewarmConnections},
			{"max_prepared_statements", p.MaxPreparedStatements},
			{"target_utilization_percent", p.TargetUtilizationPercent},
			{"health_threshold", p.HealthThreshold},
		} {
			if f.n < 0 {
				ps.add(path+"."+f.name, "must not be negative")
			}
		}
		if p.TargetUtilizationPercent > 100 {
			ps.add(path+".target_utilization_percent", "must be at most 100")
		}
		if p.HealthThreshold > 100 {
			ps.add(path+".health_threshold", "must be at most 100")
		}
		for _, f := range []struct {
			name string
			d    time.Duration
		}{
			{"acquire_timeout", p.AcquireTimeout},
			{"max_lifetime", p.MaxLifetime},
			{"max_lifetime_jitter", p.MaxLifetimeJitter},
			{"idle_timeout", p.IdleTimeout},
			{"health_check_period", p.HealthCheckPeriod},
			{"connect_timeout", p.ConnectTimeout},
			{"sizing_interval", p.SizingInterval},
			{"shrink_cooldown", p.ShrinkCooldown},
		} {
			if f.d < 0 {
				ps.add(path+"."+f.name, "must not be negative")
			}
		}
	})
	if c.BackendReservedConnections < 0 {
		ps.add("backend_reserved_connections", "must not be negative")
	}
	if c.Learning.SaveInterval < 0 {
		ps.add("learning.save_interval", "must not be negative")
	}
	for i, u := range c.AdminUsers {
		if u == "" {
			ps.add(fmt.Sprintf("admin_users[%d]", i), "must not be empty")
		}
	}
	// Zero inherits in databases and users, but the top-level pool is where
	// inheritance stops: an explicit 0 there is a mistake.
	if c.Pool.MaxConnections == 0 {
		ps.add("pool.max_connections", "must be at least 1")
	}

	// Limits that relate two fields are checked on the merged pools, each
	// reported once, at the most general place it shows up.
	topBad := poolLimitProblems(mergePools(c.PoolMode, c.Pool))
	for _, field := range sortedKeys(topBad) {
		ps.add("pool."+field, "%s", topBad[field])
	}
	dbBad := map[string]map[string]string{}
	for _, name := range sortedKeys(c.Databases) {
		bad := poolLimitProblems(mergePools(c.PoolMode, c.Pool, c.Databases[name].Pool))
		dbBad[name] = bad
		for _, field := range sortedKeys(bad) {
			if _, ok := topBad[field]; !ok {
				ps.add("databases."+name+".pool."+field, "%s", bad[field])
			}
		}
	}
	for _, user := range sortedKeys(c.Users) {
		userBad := poolLimitProblems(mergePools(c.PoolMode, c.Pool, c.Users[user].Pool))
		for _, field := range sortedKeys(userBad) {
			if _, ok := topBad[field]; !ok {
				ps.add("users."+user+".pool."+field, "%s", userBad[field])
			}
		}
		for _, db := range sortedKeys(c.Databases) {
			bad := poolLimitProblems(mergePools(c.PoolMode, c.Pool, c.Databases[db].Pool, c.Users[user].Pool))
			for _, field := range sortedKeys(bad) {
				_, inTop := topBad[field]
				_, inDB := dbBad[db][field]
				_, inUser := userBad[field]
				if !inTop && !inDB && !inUser {
					ps.add("users."+user+".pool."+field, "%s with database %q", bad[field], db)
				}
			}
		}
	}
}

// poolLimitProblems maps each field of merged pool p that breaks a limit to
// what is wrong with it.
func poolLimitProblems(p Pool) map[string]string {
	bad := map[string]string{}
	if p.MinConnections > p.MaxConnections {
		bad["min_connections"] = fmt.Sprintf("%d exceeds max_connections %d", p.MinConnections, p.MaxConnections)
	}
	if p.PrewarmConnections > p.MaxConnections {
		bad["prewarm_connections"] = fmt.Sprintf("%d exceeds max_connections %d", p.PrewarmConnections, p.MaxConnections)
	}
	return bad
}

// forEachPool calls f with every pool section as written, with its path.
func (c *Config) forEachPool(f func(path string, p Pool)) {
	f("pool", c.Pool)
	for name, db := range c.Databases {
		f("databases."+name+".pool", db.Pool)
	}
	for name, u := range c.Users {
		f("users."+name+".pool", u.Pool)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
