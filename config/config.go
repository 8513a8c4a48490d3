package config

import "time"

// PoolMode says when a server connection is handed back to its pool.
type PoolMode string

const (
	// PoolModeSession keeps one server connection per client for the client's
	// whole connection.
	PoolModeSession PoolMode = "session"
	// PoolModeTransaction returns the server connection at the end of each
	// transaction (ReadyForQuery with status idle and nothing pending).
	PoolModeTransaction PoolMode = "transaction"
)

// AuthMethod is how kproxy authenticates clients.
type AuthMethod string

const (
	// AuthTrust accepts every client without a password. Default when no users
	// are configured.
	AuthTrust AuthMethod = "trust"
	// AuthMD5 asks for an MD5-hashed password; needs a plain password.
	AuthMD5 AuthMethod = "md5"
	// AuthSCRAM runs SCRAM-SHA-256; works with a plain password or a SCRAM
	// secret. Default when users are configured.
	AuthSCRAM AuthMethod = "scram-sha-256"
)

// Config is the whole of kproxy's configuration.
type Config struct {
	// Listen is the client-facing address. Default "127.0.0.1:6432".
	Listen string `yaml:"listen"`
	// AdminListen is the HTTP address for stats and health. Default
	// "127.0.0.1:9930"; empty string disables it.
	AdminListen string `yaml:"admin_listen"`
	// PoolMode is the default pool mode. Default "transaction".
	PoolMode PoolMode `yaml:"pool_mode"`
	// Primary is the read-write server. Required.
	Primary Backend `yaml:"primary"`
	// Replicas are streaming replicas of Primary. Optional.
	Replicas []Backend `yaml:"replicas"`
	// TLS configures TLS towards clients.
	TLS TLS `yaml:"tls"`
	// BackendTLS configures TLS towards Primary and Replicas.
	BackendTLS BackendTLS `yaml:"backend_tls"`
	// Auth configures client authentication.
	Auth Auth `yaml:"auth"`
	// Pool holds the pool settings every pool starts from.
	Pool Pool `yaml:"pool"`
	// Databases overrides settings per database name (as the client names it).
	Databases map[string]Database `yaml:"databases"`
	// Users lists users with their passwords and per-user overrides.
	Users map[string]User `yaml:"users"`
	// ShutdownTimeout is how long SIGTERM waits for open transactions before
	// closing every connection. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// RelayEngine is how kproxy relays between clients and servers:
	// "goroutine" (a goroutine per client) or "loop" (event loops that own
	// the sockets and run the common path of a transaction themselves; see
	// proxy's doc.go). Default "goroutine".
	RelayEngine string `yaml:"relay_engine"`
	// EventLoops is how many event loops relay_engine "loop" runs; 0 means
	// one per GOMAXPROCS. Default 0.
	EventLoops int `yaml:"event_loops"`
	// MaxMessageBytes caps a single protocol message from a client; larger
	// messages are refused with 08P01. Default 64 MiB.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// LogLevel is debug, info, warn or error. Default "info".
	LogLevel string `yaml:"log_level"`
	// Routing says how reads are sent to replicas.
	Routing Routing `yaml:"routing"`
	// BackendReservedConnections are the connections of each backend's
	// max_connections (beyond superuser_reserved_connections) that kproxy
	// leaves for other clients. The rest is the budget all of kproxy's
	// pools on that backend share. Default 5.
	BackendReservedConnections int `yaml:"backend_reserved_connections"`
	// AdminUsers may use the admin console (the virtual database kproxy).
	// Empty: every user that authenticates may.
	AdminUsers []string `yaml:"admin_users"`
	// Learning configures where learned workload patterns are kept.
	Learning Learning `yaml:"learning"`
	// Workflows are the hosted workflows, by name (see Workflow).
	Workflows map[string]Workflow `yaml:"workflows"`
	// WorkflowResilience declares the circuit breakers and rate limiters
	// that workflow nodes share by name.
	WorkflowResilience WorkflowResilience `yaml:"workflow_resilience"`
	// WorkflowCache configures the caches workflow nodes use.
	WorkflowCache WorkflowCache `yaml:"workflow_cache"`
}

// Learning configures persistence of learned workload patterns.
type Learning struct {
	// RedisAddr (host:port) keeps the patterns in Redis, so that a restart
	// does not forget them. Empty: kept in memory only.
	RedisAddr string `yaml:"redis_addr"`
	// RedisKey is the key prefix in Redis. Default "kproxy:workload".
	RedisKey string `yaml:"redis_key"`
	// SaveInterval is how often the patterns are saved. Default 1m.
	SaveInterval time.Duration `yaml:"save_interval"`
}

// Routing configures read/write splitting (transaction mode only: a
// session-mode client keeps its server connection on the primary).
type Routing struct {
	// ReplicaReads sends read-only transactions to healthy, caught-up
	// replicas. Default true; without replicas it has no effect.
	ReplicaReads bool `yaml:"replica_reads"`
	// MaxReplicaLagBytes ejects a replica whose replay position trails the
	// primary by more WAL than this. Default 16 MiB.
	MaxReplicaLagBytes int64 `yaml:"max_replica_lag_bytes"`
	// MaxReplicaLag ejects a replica that is behind and has replayed
	// nothing for longer than this. Default 10s.
	MaxReplicaLag time.Duration `yaml:"max_replica_lag"`
	// ReadYourWritesWait is how long a read after the client's write may
	// wait for a replica to replay that write before it runs on the
	// primary instead. Default 0: use the primary at once.
	ReadYourWritesWait time.Duration `yaml:"read_your_writes_wait"`
	// CheckPeriod is how often each replica's health and position are
	// read. Default 500ms.
	CheckPeriod time.Duration `yaml:"check_period"`
	// MonitorUser, MonitorPassword and MonitorDatabase are what the health
	// checks log in as. Defaults: postgres, no password, postgres.
	MonitorUser     string `yaml:"monitor_user"`
	MonitorPassword string `yaml:"monitor_password"`
	MonitorDatabase string `yaml:"monitor_database"`
	// ReadOnlyFunctions names user functions (name or schema.name) that may
	// run on a replica although pg_proc says they are VOLATILE. A function
	// listed here that writes after all is refused by the replica; kproxy
	// then runs the transaction on the primary and remembers its shape.
	ReadOnlyFunctions []string `yaml:"read_only_functions"`
}

// Backend is one Postgres server.
type Backend struct {
	// Host is a host name or IP address; a path starting with "/" is a Unix
	// socket directory.
	Host string `yaml:"host"`
	// Port defaults to 5432.
	Port uint16 `yaml:"port"`
}

// TLS is the certificate kproxy presents to clients. With both files set,
// SSLRequest is answered with TLS; otherwise it is declined with 'N'.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// BackendTLS is how kproxy connects to Postgres.
type BackendTLS struct {
	// SSLMode is a libpq sslmode: disable, allow, prefer, require, verify-ca,
	// verify-full. Default "prefer".
	SSLMode string `yaml:"sslmode"`
	// RootCertFile verifies the server for verify-ca and verify-full.
	RootCertFile string `yaml:"root_cert_file"`
}

// Auth is client authentication.
type Auth struct {
	// Method is trust, md5 or scram-sha-256. Default: trust when Users is
	// empty, scram-sha-256 otherwise.
	Method AuthMethod `yaml:"method"`
}

// Pool holds pool settings. In Databases and Users, zero fields inherit.
type Pool struct {
	// Mode overrides Config.PoolMode.
	Mode PoolMode `yaml:"mode"`
	// MinConnections are kept open once reached. Default 0.
	MinConnections int `yaml:"min_connections"`
	// MaxConnections caps server connections per (backend, database, user).
	// Default 20.
	MaxConnections int `yaml:"max_connections"`
	// PrewarmConnections are opened when the pool is created. Default 0.
	PrewarmConnections int `yaml:"prewarm_connections"`
	// AcquireTimeout bounds the wait for a server connection; past it the
	// client gets SQLSTATE 53300. Default 5s.
	AcquireTimeout time.Duration `yaml:"acquire_timeout"`
	// MaxLifetime closes a connection this long after it was opened, plus up
	// to MaxLifetimeJitter. Default 1h; 0 in a file means the default.
	MaxLifetime time.Duration `yaml:"max_lifetime"`
	// MaxLifetimeJitter spreads closes so connections do not expire together.
	// Default 5m.
	MaxLifetimeJitter time.Duration `yaml:"max_lifetime_jitter"`
	// IdleTimeout closes a connection idle this long (above MinConnections).
	// Default 10m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// HealthCheckPeriod is how often idle connections are checked for
	// liveness. Default 30s.
	HealthCheckPeriod time.Duration `yaml:"health_check_period"`
	// ConnectTimeout bounds dialling and authenticating to Postgres. Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// MaxPreparedStatements bounds the prepared statements kproxy keeps on
	// each server connection in transaction mode; the least recently used is
	// closed on the server to make room. Default 1000.
	MaxPreparedStatements int `yaml:"max_prepared_statements"`
	// AdaptiveSizing lets kproxy size the pool between MinConnections and
	// MaxConnections from the load it measures (and, with PatternLearning,
	// the load it expects). Without it the pool may open up to
	// MaxConnections. Default false.
	AdaptiveSizing bool `yaml:"adaptive_sizing"`
	// SizingInterval is how often the adaptive sizer decides. Default 1s.
	SizingInterval time.Duration `yaml:"sizing_interval"`
	// ShrinkCooldown is how long the load must stay low after the last
	// change before the sizer shrinks the pool. Default 5s.
	ShrinkCooldown time.Duration `yaml:"shrink_cooldown"`
	// TargetUtilizationPercent is the share of the pool's connections the
	// sizer aims to keep busy. Default 75.
	TargetUtilizationPercent int `yaml:"target_utilization_percent"`
	// HealthThreshold recycles, when it is released, a server connection
	// whose health score (0-100) fell below it. Default 50.
	HealthThreshold int `yaml:"health_threshold"`
	// PatternLearning records, per statement shape, how often and how long
	// transactions run and when in the week, to forecast the load and
	// pre-warm the pool ahead of a predicted peak. Default false.
	PatternLearning bool `yaml:"pattern_learning"`
}

// Database is per-database configuration.
type Database struct {
	// Name is the database to connect to on the backend. Default: the name
	// the client asked for.
	Name string `yaml:"name"`
	// Pool overrides Config.Pool for this database.
	Pool Pool `yaml:"pool"`
}

// User is one client user.
type User struct {
	// Password is the user's plain password; kproxy checks clients against it
	// and, unless BackendPassword is set, uses it towards Postgres.
	Password string `yaml:"password"`
	// SCRAMSecret is a Postgres-format secret
	// ("SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>") to check clients
	// against without knowing the password.
	SCRAMSecret string `yaml:"scram_secret"`
	// BackendPassword is the password towards Postgres, when it differs.
	BackendPassword string `yaml:"backend_password"`
	// Pool overrides Config.Pool (and the database's) for this user.
	Pool Pool `yaml:"pool"`
}

// Default returns a Config with every default filled in and no primary.
func Default() Config {
	return Config{
		Listen:                     "127.0.0.1:6432",
		AdminListen:                "127.0.0.1:9930",
		PoolMode:                   PoolModeTransaction,
		BackendTLS:                 BackendTLS{SSLMode: "prefer"},
		Pool:                       DefaultPool(),
		ShutdownTimeout:            30 * time.Second,
		MaxMessageBytes:            64 << 20,
		RelayEngine:                "goroutine",
		LogLevel:                   "info",
		BackendReservedConnections: 5,
		Learning:                   Learning{RedisKey: "kproxy:workload", SaveInterval: time.Minute},
		WorkflowCache:              WorkflowCache{LocalEntries: 1024, RedisPrefix: "kproxy:workflow:"},
		Routing: Routing{
			ReplicaReads:       true,
			MaxReplicaLagBytes: 16 << 20,
			MaxReplicaLag:      10 * time.Second,
			CheckPeriod:        500 * time.Millisecond,
			MonitorUser:        "postgres",
			MonitorDatabase:    "postgres",
		},
	}
}

// DefaultPool returns the built-in pool settings.
func DefaultPool() Pool {
	return Pool{
		MaxConnections:    20,
		AcquireTimeout:    5 * time.Second,
		MaxLifetime:       time.Hour,
		MaxLifetimeJitter: 5 * time.Minute,
		IdleTimeout:       10 * time.Minute,
		HealthCheckPeriod: 30 * time.Second,
		ConnectTimeout:    5 * time.Second,

		MaxPreparedStatements: 1000,

		SizingInterval:           time.Second,
		ShrinkCooldown:           5 * time.Second,
		TargetUtilizationPercent: 75,
		HealthThreshold:          50,
	}
}
