package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeConfig writes text to a fresh file and returns its path.
func writeConfig(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	return path
}

// problemsOf returns the problems in err, failing the test if err is not a
// *ValidationError.
func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	require.Error(t, err)
	var ve *ValidationError
	require.ErrorAs(t, err, &ve)
	return ve.Problems
}

// requireProblem fails unless ps has a problem at path whose message
// contains msg.
func requireProblem(t *testing.T, ps []Problem, path, msg string) {
	t.Helper()
	for _, p := range ps {
		if p.Path == path && strings.Contains(p.Message, msg) {
			return
		}
	}
	require.Failf(t, "problem not reported", "want %s: ...%s...\ngot:\n%s", path, msg, (&ValidationError{Problems: ps}).Error())
}

func TestLoadWithoutFileOrEnvironmentReturnsDefaultsAndAsksForPrimary(t *testing.T) {
	c, err := Load("", nil)
	ps := problemsOf(t, err)
	require.Equal(t, []Problem{{Path: "primary.host", Message: "required"}}, ps)
	want := Default()
	want.Primary.Port = DefaultPort
	assert.Equal(t, want, c)
}

func TestDefaultsAreDocumentedValues(t *testing.T) {
	c := Default()
	assert.Equal(t, "127.0.0.1:6432", c.Listen)
	assert.Equal(t, "127.0.0.1:9930", c.AdminListen)
	assert.Equal(t, PoolModeTransaction, c.PoolMode)
	assert.Equal(t, "prefer", c.BackendTLS.SSLMode)
	assert.Equal(t, 30*time.Second, c.ShutdownTimeout)
	assert.Equal(t, 64<<20, c.MaxMessageBytes)
	assert.Equal(t, "info", c.LogLevel)
	assert.Equal(t, DefaultPool(), c.Pool)
	assert.Equal(t, AuthTrust, c.EffectiveAuthMethod())

	c.Primary.Host = "db"
	require.NoError(t, c.Validate())
}

func TestLoadOverlaysFileOnDefaults(t *testing.T) {
	path := writeConfig(t, `
listen: ":7432"
admin_listen: ""
pool_mode: session
primary: {host: db1, port: 5433}
replicas:
  - db2:5434
  - {host: "::1"}
  - "[fe80::1]:6000"
tls: {cert_file: c.pem, key_file: k.pem}
backend_tls: {sslmode: verify-full, root_cert_file: ca.pem}
auth: {method: md5}
pool:
  max_connections: 50
  acquire_timeout: 1m30s
databases:
  app:
    name: app_prod
    pool: {mode: transaction, max_connections: 10}
  reports: ~
users:
  bob:
    password: 1234
    backend_password: secret
    pool: {min_connections: 2}
shutdown_timeout: 10s
max_message_bytes: 0x100000
log_level: debug
`)
	c, err := Load(path, nil)
	require.NoError(t, err)

	want := Default()
	want.Listen = ":7432"
	want.AdminListen = ""
	want.PoolMode = PoolModeSession
	want.Primary = Backend{Host: "db1", Port: 5433}
	want.Replicas = []Backend{{Host: "db2", Port: 5434}, {Host: "::1", Port: 5432}, {Host: "fe80::1", Port: 6000}}
	want.TLS = TLS{CertFile: "c.pem", KeyFile: "k.pem"}
	want.BackendTLS = BackendTLS{SSLMode: "verify-full", RootCertFile: "ca.pem"}
	want.Auth.Method = AuthMD5
	want.Pool.MaxConnections = 50
	want.Pool.AcquireTimeout = 90 * time.Second
	want.Databases = map[string]Database{
		"app":     {Name: "app_prod", Pool: Pool{Mode: PoolModeTransaction, MaxConnections: 10}},
		"reports": {},
	}
	want.Users = map[string]User{
		"bob": {Password: "1234", BackendPassword: "secret", Pool: Pool{MinConnections: 2}},
	}
	want.ShutdownTimeout = 10 * time.Second
	want.MaxMessageBytes = 1 << 20
	want.LogLevel = "debug"
	assert.Equal(t, want, c)
}

func TestLoadLetsEnvironmentOverrideFile(t *testing.T) {
	path := writeConfig(t, `
listen: 127.0.0.1:1111
pool_mode: transaction
primary: file-db:5432
replicas: [file-replica]
pool: {mode: transaction, max_connections: 5, acquire_timeout: 1s}
tls: {cert_file: file.pem, key_file: file.key}
log_level: warn
`)
	c, err := Load(path, []string{
		"PATH=/usr/bin",
		"KPROXY_LISTEN=127.0.0.1:2222",
		"KPROXY_ADMIN_LISTEN=",
		"KPROXY_POOL_MODE=session",
		"KPROXY_PRIMARY=env-db:6543",
		"KPROXY_PRIMARY_PORT=7000",
		"KPROXY_REPLICAS=r1:5001, [::1]:5002,",
		"KPROXY_POOL_MAX_CONNECTIONS=9",
		"KPROXY_POOL_ACQUIRE_TIMEOUT=250ms",
		"KPROXY_TLS_CERT_FILE=env.pem",
		"KPROXY_BACKEND_TLS_SSLMODE=require",
		"KPROXY_AUTH_METHOD=trust",
		"KPROXY_SHUTDOWN_TIMEOUT=1m",
		"KPROXY_MAX_MESSAGE_BYTES=4096",
		"KPROXY_LOG_LEVEL=info",
		"KPROXY_LOG_LEVEL=error", // a later entry wins
		"KPROXY_TEST_DSN=postgres://ignored",
	})
	require.NoError(t, err)

	assert.Equal(t, "127.0.0.1:2222", c.Listen)
	assert.Empty(t, c.AdminListen)
	assert.Equal(t, PoolModeSession, c.PoolMode)
	assert.Empty(t, c.Pool.Mode, "KPROXY_POOL_MODE must beat pool.mode from the file")
	assert.Equal(t, PoolModeSession, c.PoolFor("any", "one").Mode)
	assert.Equal(t, Backend{Host: "env-db", Port: 7000}, c.Primary)
	assert.Equal(t, []Backend{{Host: "r1", Port: 5001}, {Host: "::1", Port: 5002}}, c.Replicas)
	assert.Equal(t, 9, c.Pool.MaxConnections)
	assert.Equal(t, 250*time.Millisecond, c.Pool.AcquireTimeout)
	assert.Equal(t, TLS{CertFile: "env.pem", KeyFile: "file.key"}, c.TLS)
	assert.Equal(t, "require", c.BackendTLS.SSLMode)
	assert.Equal(t, AuthTrust, c.Auth.Method)
	assert.Equal(t, time.Minute, c.ShutdownTimeout)
	assert.Equal(t, 4096, c.MaxMessageBytes)
	assert.Equal(t, "error", c.LogLevel)
}

func TestLoadReportsUnknownKeysWithFullPathsTogetherWithOtherProblems(t *testing.T) {
	path := writeConfig(t, `
primary: {host: db, prot: 5432}
listn: ":6432"
databases:
  app:
    pool:
      max_conections: 5
      mode: sesion
users:
  bob: {passwd: x}
replicas:
  - {host: r1, weight: 2}
log_level: loud
`)
	_, err := Load(path, []string{"KPROXY_POOL_MAX_CONECTIONS=3"})
	ps := problemsOf(t, err)

	requireProblem(t, ps, "primary.prot", "unknown key (line 2)")
	requireProblem(t, ps, "listn", "unknown key")
	requireProblem(t, ps, "databases.app.pool.max_conections", "unknown key (line 7)")
	requireProblem(t, ps, "users.bob.passwd", "unknown key")
	requireProblem(t, ps, "replicas[0].weight", "unknown key")
	requireProblem(t, ps, "KPROXY_POOL_MAX_CONECTIONS", "unknown environment variable")
	requireProblem(t, ps, "databases.app.pool.mode", `must be session or transaction, got "sesion"`)
	requireProblem(t, ps, "log_level", `got "loud"`)
	requireProblem(t, ps, "users.bob", "needs password or scram_secret")
	assert.Contains(t, err.Error(), "databases.app.pool.max_conections: unknown key")
	assert.Len(t, ps, 9)
}

func TestLoadReportsBadlyFormedValues(t *testing.T) {
	tests := []struct {
		name, yaml, path, msg string
	}{
		{"a duration without a unit is refused", "shutdown_timeout: 30", "shutdown_timeout", "must be a duration"},
		{"a duration that is not Go syntax is refused", "pool: {idle_timeout: 1 hour}", "pool.idle_timeout", "must be a duration"},
		{"a port given as a string is refused", "primary: {host: db, port: '5432'}", "primary.port", "must be a port number"},
		{"a port above 65535 is refused", "primary: {host: db, port: 70000}", "primary.port", "must be a port number"},
		{"a negative port is refused", "replicas: [{host: r, port: -1}]", "replicas[0].port", "must be a port number"},
		{"a bad primary string is refused", "primary: 'db:port'", "primary", "port must be a number"},
		{"an unbracketed IPv6 replica is refused", "replicas: ['::1:5432']", "replicas[0]", "needs brackets"},
		{"an integer given as a word is refused", "pool: {max_connections: many}", "pool.max_connections", "must be an integer"},
		{"an integer given as a float is refused", "max_message_bytes: 1.5", "max_message_bytes", "must be an integer"},
		{"a mapping where a string belongs is refused", "listen: {host: x}", "listen", "must be a string, not a mapping"},
		{"a scalar where a section belongs is refused", "pool: big", "pool", "must be a mapping"},
		{"a mapping where a list belongs is refused", "replicas: {host: r}", "replicas", "must be a sequence"},
		{"a list where a map belongs is refused", "databases: [app]", "databases", "must be a mapping"},
		{"a duplicate key is refused", "log_level: info\nlog_level: debug", "log_level", "duplicate key (line 2)"},
		{"a duplicate database is refused", "databases: {app: {}, app: {}}", "databases.app", "duplicate key"},
		{"a document that is not a mapping is refused", "just words", "", "must be a mapping"},
		{"a second document is refused", "log_level: info\n---\nlog_level: debug", "", "more than one YAML document"},
		{"a merge of a scalar is refused", "pool: {<<: 5}", "pool", "a merge (<<) takes a mapping"},
		{"an unknown key inside a merged mapping is reported", "base: &b {max_conns: 1}\npool: {<<: *b}", "pool.max_conns", "unknown key"},
		{"a mapping key is refused", "? [a]\n: b", "", "a key must be a scalar"},
		{"an empty read-only function is refused", "routing: {read_only_functions: [ok, '']}", "routing.read_only_functions[1]", "function name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tt.yaml), []string{"KPROXY_PRIMARY=db"})
			requireProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
}

func TestLoadReadsYAMLFeatures(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, c Config)
	}{
		{
			name: "an empty file gives the defaults",
			yaml: "# nothing but a comment\n",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, Default().Pool, c.Pool)
			},
		},
		{
			name: "a null value keeps the default",
			yaml: "log_level:\nadmin_listen: ~\npool: ~",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, "info", c.LogLevel)
				assert.Equal(t, "127.0.0.1:9930", c.AdminListen)
				assert.Equal(t, DefaultPool(), c.Pool)
			},
		},
		{
			name: "aliases and merge keys share settings, written keys winning",
			yaml: `
databases:
  a: {pool: &small {max_connections: 3, idle_timeout: 1m}}
  b: {pool: {<<: *small, max_connections: 4}}
  c: {pool: {<<: [{min_connections: 1}, *small]}}
`,
			check: func(t *testing.T, c Config) {
				assert.Equal(t, Pool{MaxConnections: 3, IdleTimeout: time.Minute}, c.Databases["a"].Pool)
				assert.Equal(t, Pool{MaxConnections: 4, IdleTimeout: time.Minute}, c.Databases["b"].Pool)
				assert.Equal(t, Pool{MinConnections: 1, MaxConnections: 3, IdleTimeout: time.Minute}, c.Databases["c"].Pool)
			},
		},
		{
			name: "a number is taken as a string where a string belongs",
			yaml: "users: {bob: {password: 0123}}",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, "0123", c.Users["bob"].Password)
			},
		},
		{
			name: "read-only functions",
			yaml: "routing: {read_only_functions: [app.lookup, Score]}",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, []string{"app.lookup", "Score"}, c.Routing.ReadOnlyFunctions)
			},
		},
		{
			name: "a zero port means the default port",
			yaml: "replicas: [{host: r, port: 0}]",
			check: func(t *testing.T, c Config) {
				assert.Equal(t, []Backend{{Host: "r", Port: DefaultPort}}, c.Replicas)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(writeConfig(t, tt.yaml), []string{"KPROXY_PRIMARY=db"})
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

func TestLoadMergesThroughAnAnchorInsideAKnownSection(t *testing.T) {
	c, err := Load(writeConfig(t, `
primary: db
databases:
  a: &a {pool: {max_connections: 3}}
  b: {<<: *a, name: bee}
`), nil)
	require.NoError(t, err)
	assert.Equal(t, Database{Name: "bee", Pool: Pool{MaxConnections: 3}}, c.Databases["b"])
}

func TestLoadRefusesMergeCyclesAndAliasBombs(t *testing.T) {
	t.Run("a mapping that merges itself is refused", func(t *testing.T) {
		_, err := Load(writeConfig(t, "primary: db\ndatabases: {a: &a {<<: *a}}"), nil)
		requireProblem(t, problemsOf(t, err), "databases.a", "a merge (<<) includes itself")
	})
	t.Run("merges doubling at every level stop at the work limit", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("primary: db\ndatabases:\n  d0: &d0 {name: x}\n")
		for i := 1; i < 40; i++ {
			fmt.Fprintf(&b, "  d%d: &d%d {<<: [*d%d, *d%d]}\n", i, i, i-1, i-1)
		}
		start := time.Now()
		_, err := Load(writeConfig(t, b.String()), nil)
		requireProblem(t, problemsOf(t, err), "", "too complex")
		assert.Less(t, time.Since(start), 10*time.Second)
	})
}

func TestLoadReportsFilesItCannotRead(t *testing.T) {
	t.Run("a missing file is an error wrapping fs.ErrNotExist", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"), nil)
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	t.Run("a file that is not YAML is an error naming the file", func(t *testing.T) {
		path := writeConfig(t, "listen: [unclosed")
		_, err := Load(path, nil)
		require.Error(t, err)
		assert.Contains(t, err.Error(), path)
		var ve *ValidationError
		assert.NotErrorAs(t, err, &ve)
	})
}

func TestLoadReportsBadEnvironmentVariablesByName(t *testing.T) {
	tests := []struct {
		name, env, path, msg string
	}{
		{"an unknown variable is refused", "KPROXY_LISTEN_ADDR=:1", "KPROXY_LISTEN_ADDR", "unknown environment variable"},
		{"a map section cannot be set", "KPROXY_DATABASES=app", "KPROXY_DATABASES", "unknown environment variable"},
		{"a badly formed integer is refused", "KPROXY_POOL_MAX_CONNECTIONS=lots", "KPROXY_POOL_MAX_CONNECTIONS", `must be an integer, not "lots"`},
		{"a badly formed duration is refused", "KPROXY_SHUTDOWN_TIMEOUT=30", "KPROXY_SHUTDOWN_TIMEOUT", "must be a duration"},
		{"a badly formed port is refused", "KPROXY_PRIMARY_PORT=99999", "KPROXY_PRIMARY_PORT", "must be a port number"},
		{"a badly formed primary is refused", "KPROXY_PRIMARY=db:x", "KPROXY_PRIMARY", "port must be a number"},
		{"a badly formed replica is refused", "KPROXY_REPLICAS=r1,::1", "KPROXY_REPLICAS", "needs brackets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load("", []string{"KPROXY_PRIMARY_HOST=db", tt.env})
			requireProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
	t.Run("test harness variables are ignored", func(t *testing.T) {
		_, err := Load("", []string{"KPROXY_PRIMARY=db", "KPROXY_TEST_ANYTHING=1", "NOT_KPROXY=1", "KPROXY_NOEQUALS"})
		require.NoError(t, err)
	})
}

func TestEveryScalarFieldHasItsOwnEnvironmentVariable(t *testing.T) {
	vars := envVars()
	for name, v := range vars {
		if name == "KPROXY_POOL_MODE" {
			assert.ElementsMatch(t, []string{"pool_mode", "pool.mode"}, v.paths)
			continue
		}
		assert.Len(t, v.paths, 1, name)
	}
	for _, name := range []string{
		"KPROXY_LISTEN", "KPROXY_ADMIN_LISTEN", "KPROXY_POOL_MODE", "KPROXY_PRIMARY", "KPROXY_PRIMARY_HOST",
		"KPROXY_PRIMARY_PORT", "KPROXY_REPLICAS", "KPROXY_TLS_CERT_FILE", "KPROXY_TLS_KEY_FILE",
		"KPROXY_BACKEND_TLS_SSLMODE", "KPROXY_BACKEND_TLS_ROOT_CERT_FILE", "KPROXY_AUTH_METHOD",
		"KPROXY_POOL_MIN_CONNECTIONS", "KPROXY_POOL_MAX_CONNECTIONS", "KPROXY_POOL_PREWARM_CONNECTIONS",
		"KPROXY_POOL_ACQUIRE_TIMEOUT", "KPROXY_POOL_MAX_LIFETIME", "KPROXY_POOL_MAX_LIFETIME_JITTER",
		"KPROXY_POOL_IDLE_TIMEOUT", "KPROXY_POOL_HEALTH_CHECK_PERIOD", "KPROXY_POOL_CONNECT_TIMEOUT",
		"KPROXY_SHUTDOWN_TIMEOUT", "KPROXY_MAX_MESSAGE_BYTES", "KPROXY_LOG_LEVEL", "KPROXY_POOL_MAX_PREPARED_STATEMENTS",
		"KPROXY_ROUTING_REPLICA_READS", "KPROXY_ROUTING_MAX_REPLICA_LAG_BYTES", "KPROXY_ROUTING_MAX_REPLICA_LAG",
		"KPROXY_ROUTING_CHECK_PERIOD", "KPROXY_ROUTING_MONITOR_USER", "KPROXY_ROUTING_MONITOR_PASSWORD",
		"KPROXY_ROUTING_MONITOR_DATABASE", "KPROXY_ROUTING_READ_YOUR_WRITES_WAIT",
		"KPROXY_POOL_ADAPTIVE_SIZING", "KPROXY_POOL_SIZING_INTERVAL", "KPROXY_POOL_SHRINK_COOLDOWN",
		"KPROXY_POOL_TARGET_UTILIZATION_PERCENT", "KPROXY_POOL_HEALTH_THRESHOLD", "KPROXY_POOL_PATTERN_LEARNING",
		"KPROXY_BACKEND_RESERVED_CONNECTIONS", "KPROXY_LEARNING_REDIS_ADDR", "KPROXY_LEARNING_REDIS_KEY",
		"KPROXY_LEARNING_SAVE_INTERVAL", "KPROXY_WORKFLOW_CACHE_LOCAL_ENTRIES", "KPROXY_WORKFLOW_CACHE_REDIS_ADDR",
		"KPROXY_WORKFLOW_CACHE_REDIS_PREFIX", "KPROXY_RELAY_ENGINE", "KPROXY_EVENT_LOOPS",
	} {
		assert.Contains(t, vars, name)
	}
	assert.Len(t, vars, 48)
}

func TestWalkerHandlesEveryFieldType(t *testing.T) {
	// value panics on a type it cannot decode; make sure none is reachable.
	seen := map[reflect.Type]bool{}
	var check func(typ reflect.Type)
	check = func(typ reflect.Type) {
		if seen[typ] {
			return
		}
		seen[typ] = true
		switch {
		case typ == durationType, typ == bindingsType, typ.Kind() == reflect.String, typ.Kind() == reflect.Int,
			typ.Kind() == reflect.Int64, typ.Kind() == reflect.Bool, typ.Kind() == reflect.Uint16,
			typ.Kind() == reflect.Float64, typ.Kind() == reflect.Interface:
		case typ.Kind() == reflect.Pointer:
			check(typ.Elem())
		case typ.Kind() == reflect.Struct:
			for i := range typ.NumField() {
				check(typ.Field(i).Type)
			}
		case typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map:
			check(typ.Elem())
		default:
			t.Errorf("no decoding for %s", typ)
		}
	}
	check(reflect.TypeFor[Config]())
}
