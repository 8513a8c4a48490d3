package config

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// validConfig returns a Config that passes Validate.
func validConfig() Config {
	c := Default()
	c.Primary = Backend{Host: "db", Port: 5432}
	return c
}

// makeSCRAMSecret builds a secret the way Postgres does (RFC 5802 with
// SHA-256), so the test does not depend on ParseSCRAMSecret's own idea of it.
func makeSCRAMSecret(t testing.TB, password string, salt []byte, iterations int) (secret string, storedKey, serverKey []byte) {
	t.Helper()
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	require.NoError(t, err)
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	serverKey = mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	secret = fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(serverKey))
	return secret, stored[:], serverKey
}

func TestValidateReportsEachRule(t *testing.T) {
	secret, _, _ := makeSCRAMSecret(t, "pw", []byte("0123456789abcdef"), 4096)
	tests := []struct {
		name   string
		change func(c *Config)
		path   string // "" with msg "" means valid
		msg    string
	}{
		{"the valid base config passes", func(c *Config) {}, "", ""},
		{"a primary host is required", func(c *Config) { c.Primary.Host = "" }, "primary.host", "required"},
		{"a replica host is required", func(c *Config) { c.Replicas = []Backend{{Host: "r"}, {Port: 5}} }, "replicas[1].host", "required"},
		{"a Unix socket directory is a valid host", func(c *Config) { c.Primary.Host = "/var/run/postgresql" }, "", ""},
		{"pool_mode must be set", func(c *Config) { c.PoolMode = "" }, "pool_mode", "required"},
		{"pool_mode must be known", func(c *Config) { c.PoolMode = "statement" }, "pool_mode", `got "statement"`},
		{"pool.mode may be empty", func(c *Config) { c.Pool.Mode = "" }, "", ""},
		{"pool.mode must be known", func(c *Config) { c.Pool.Mode = "x" }, "pool.mode", `got "x"`},
		{"a database pool mode must be known", func(c *Config) {
			c.Databases = map[string]Database{"app": {Pool: Pool{Mode: "x"}}}
		}, "databases.app.pool.mode", `got "x"`},
		{"a user pool mode must be known", func(c *Config) {
			c.Users = map[string]User{"bob": {Password: "p", Pool: Pool{Mode: "x"}}}
		}, "users.bob.pool.mode", `got "x"`},
		{"auth.method must be known", func(c *Config) { c.Auth.Method = "password" }, "auth.method", `got "password"`},
		{"md5 needs a plain password", func(c *Config) {
			c.Auth.Method = AuthMD5
			c.Users = map[string]User{"bob": {SCRAMSecret: secret}}
		}, "users.bob.password", "required with auth.method md5"},
		{"md5 with passwords passes", func(c *Config) {
			c.Auth.Method = AuthMD5
			c.Users = map[string]User{"bob": {Password: "p"}}
		}, "", ""},
		{"scram needs a password or a secret", func(c *Config) {
			c.Users = map[string]User{"bob": {BackendPassword: "p"}}
		}, "users.bob", "needs password or scram_secret"},
		{"scram with a well-formed secret passes", func(c *Config) {
			c.Users = map[string]User{"bob": {SCRAMSecret: secret}}
		}, "", ""},
		{"a malformed secret is refused", func(c *Config) {
			c.Users = map[string]User{"bob": {SCRAMSecret: "SCRAM-SHA-256$4096:c2FsdA==$short:short"}}
		}, "users.bob.scram_secret", "malformed SCRAM secret"},
		{"a malformed secret is refused even under trust", func(c *Config) {
			c.Auth.Method = AuthTrust
			c.Users = map[string]User{"bob": {SCRAMSecret: "md5abc"}}
		}, "users.bob.scram_secret", "malformed SCRAM secret"},
		{"a tls cert without a key is refused", func(c *Config) { c.TLS.CertFile = "c.pem" }, "tls.key_file", "required when tls.cert_file is set"},
		{"a tls key without a cert is refused", func(c *Config) { c.TLS.KeyFile = "k.pem" }, "tls.cert_file", "required when tls.key_file is set"},
		{"tls with both files passes", func(c *Config) { c.TLS = TLS{CertFile: "c", KeyFile: "k"} }, "", ""},
		{"sslmode must be a libpq mode", func(c *Config) { c.BackendTLS.SSLMode = "on" }, "backend_tls.sslmode", `got "on"`},
		{"sslmode verify-full passes", func(c *Config) { c.BackendTLS.SSLMode = "verify-full" }, "", ""},
		{"min above max is refused", func(c *Config) { c.Pool.MinConnections = 21 }, "pool.min_connections", "21 exceeds max_connections 20"},
		{"prewarm above max is refused", func(c *Config) { c.Pool.PrewarmConnections = 30 }, "pool.prewarm_connections", "30 exceeds max_connections 20"},
		{"a top-level max of zero is refused", func(c *Config) { c.Pool.MaxConnections = 0 }, "pool.max_connections", "at least 1"},
		{"a negative max is refused", func(c *Config) {
			c.Databases = map[string]Database{"app": {Pool: Pool{MaxConnections: -1}}}
		}, "databases.app.pool.max_connections", "must not be negative"},
		{"a database max below the inherited min is refused", func(c *Config) {
			c.Pool.MinConnections = 5
			c.Databases = map[string]Database{"app": {Pool: Pool{MaxConnections: 2}}}
		}, "databases.app.pool.min_connections", "5 exceeds max_connections 2"},
		{"a user min above a database max is refused", func(c *Config) {
			c.Databases = map[string]Database{"app": {Pool: Pool{MaxConnections: 2}}}
			c.Users = map[string]User{"bob": {Password: "p", Pool: Pool{MinConnections: 3}}}
		}, "users.bob.pool.min_connections", `3 exceeds max_connections 2 with database "app"`},
		{"a negative pool duration is refused", func(c *Config) { c.Pool.AcquireTimeout = -time.Second }, "pool.acquire_timeout", "must not be negative"},
		{"a negative user pool duration is refused", func(c *Config) {
			c.Users = map[string]User{"bob": {Password: "p", Pool: Pool{IdleTimeout: -1}}}
		}, "users.bob.pool.idle_timeout", "must not be negative"},
		{"a negative shutdown timeout is refused", func(c *Config) { c.ShutdownTimeout = -1 }, "shutdown_timeout", "must not be negative"},
		{"log_level must be known", func(c *Config) { c.LogLevel = "trace" }, "log_level", `got "trace"`},
		{"max_message_bytes below 1024 is refused", func(c *Config) { c.MaxMessageBytes = 1023 }, "max_message_bytes", "at least 1024"},
		{"max_message_bytes of 1024 passes", func(c *Config) { c.MaxMessageBytes = 1024 }, "", ""},
		{"listen is required", func(c *Config) { c.Listen = "" }, "listen", "required"},
		{"listen must be host:port", func(c *Config) { c.Listen = "6432" }, "listen", "must be host:port"},
		{"listen needs a numeric port", func(c *Config) { c.Listen = "localhost:pg" }, "listen", "port must be a number"},
		{"listen on every interface and a free port passes", func(c *Config) { c.Listen = ":0" }, "", ""},
		{"admin_listen may be empty", func(c *Config) { c.AdminListen = "" }, "", ""},
		{"admin_listen must be host:port", func(c *Config) { c.AdminListen = "localhost" }, "admin_listen", "must be host:port"},
		{"an empty user name is refused", func(c *Config) {
			c.Users = map[string]User{"": {Password: "p"}}
		}, "users", "user name must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.change(&c)
			err := c.Validate()
			if tt.path == "" && tt.msg == "" {
				require.NoError(t, err)
				return
			}
			requireProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
}

func TestValidateReportsEveryProblemOnceSortedByPath(t *testing.T) {
	c := validConfig()
	c.Primary.Host = ""
	c.LogLevel = "loud"
	c.Pool.MinConnections = 50 // also above every database's inherited max
	c.Databases = map[string]Database{"app": {}}
	c.Users = map[string]User{"bob": {Password: "p"}}
	c.BackendTLS.SSLMode = ""
	err := c.Validate()
	ps := problemsOf(t, err)
	assert.Equal(t, []Problem{
		{Path: "backend_tls.sslmode", Message: `must be one of disable, allow, prefer, require, verify-ca, verify-full; got ""`},
		{Path: "log_level", Message: `must be one of debug, info, warn, error; got "loud"`},
		{Path: "pool.min_connections", Message: "50 exceeds max_connections 20"},
		{Path: "primary.host", Message: "required"},
	}, ps)
	assert.Equal(t, `backend_tls.sslmode: must be one of disable, allow, prefer, require, verify-ca, verify-full; got ""
log_level: must be one of debug, info, warn, error; got "loud"
pool.min_connections: 50 exceeds max_connections 20
primary.host: required`, err.Error())
}

func TestValidationErrorSortsProblemsItWasGiven(t *testing.T) {
	err := &ValidationError{Problems: []Problem{{"b", "two"}, {"", "whole file"}, {"a", "one"}}}
	assert.Equal(t, "whole file\na: one\nb: two", err.Error())
	assert.Equal(t, "b", err.Problems[0].Path, "Error must not reorder Problems")
}

func TestValidateFillsDefaultPorts(t *testing.T) {
	c := validConfig()
	c.Primary.Port = 0
	c.Replicas = []Backend{{Host: "r1"}, {Host: "r2", Port: 6000}}
	require.NoError(t, c.Validate())
	assert.Equal(t, uint16(DefaultPort), c.Primary.Port)
	assert.Equal(t, []Backend{{Host: "r1", Port: DefaultPort}, {Host: "r2", Port: 6000}}, c.Replicas)
}

func TestParseSCRAMSecretReadsAPostgresSecret(t *testing.T) {
	salt := []byte("sixteen byte slt")
	secret, stored, server := makeSCRAMSecret(t, "correct horse", salt, 4096)
	s, err := ParseSCRAMSecret(secret)
	require.NoError(t, err)
	assert.Equal(t, SCRAMSecret{Iterations: 4096, Salt: salt, StoredKey: stored, ServerKey: server}, s)
}

func TestParseSCRAMSecretRefusesMalformedSecrets(t *testing.T) {
	good, _, _ := makeSCRAMSecret(t, "pw", []byte("salt"), 4096)
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	tests := []struct {
		name, secret, msg string
	}{
		{"an empty string is refused", "", "must start with"},
		{"an md5 hash is refused", "md5" + "0123456789abcdef0123456789abcdef", "must start with"},
		{"SCRAM-SHA-1 is refused", "SCRAM-SHA-1$4096:c2FsdA==$" + key + ":" + key, "must start with"},
		{"a missing key part is refused", "SCRAM-SHA-256$4096:c2FsdA==", "want SCRAM-SHA-256$"},
		{"missing iterations are refused", "SCRAM-SHA-256$c2FsdA==$" + key + ":" + key, "want <iterations>:<salt>"},
		{"zero iterations are refused", "SCRAM-SHA-256$0:c2FsdA==$" + key + ":" + key, "iterations must be"},
		{"negative iterations are refused", "SCRAM-SHA-256$-1:c2FsdA==$" + key + ":" + key, "iterations must be"},
		{"huge iterations are refused", "SCRAM-SHA-256$99999999999:c2FsdA==$" + key + ":" + key, "iterations must be"},
		{"an empty salt is refused", "SCRAM-SHA-256$4096:$" + key + ":" + key, "salt must be"},
		{"a salt that is not base64 is refused", "SCRAM-SHA-256$4096:!!$" + key + ":" + key, "salt must be"},
		{"a missing ServerKey is refused", "SCRAM-SHA-256$4096:c2FsdA==$" + key, "want <StoredKey>:<ServerKey>"},
		{"a short StoredKey is refused", "SCRAM-SHA-256$4096:c2FsdA==$" + short + ":" + key, "StoredKey must be 32 bytes"},
		{"a short ServerKey is refused", "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + short, "ServerKey must be 32 bytes"},
		{"a trailing part is refused", good + "$extra", "ServerKey must be 32 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSCRAMSecret(tt.secret)
			require.ErrorIs(t, err, ErrMalformedSCRAMSecret)
			assert.Contains(t, err.Error(), tt.msg)
			if tt.secret != "" {
				assert.NotContains(t, err.Error(), tt.secret, "errors must not quote the secret")
			}
		})
	}
}
