package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPoolForInheritsFieldByField(t *testing.T) {
	c := validConfig()
	c.PoolMode = PoolModeSession
	c.Pool = Pool{MaxConnections: 30, IdleTimeout: time.Minute} // zeros inherit DefaultPool
	c.Databases = map[string]Database{
		"app":     {Pool: Pool{Mode: PoolModeTransaction, MaxConnections: 10, ConnectTimeout: 2 * time.Second}},
		"reports": {Name: "reporting"},
	}
	c.Users = map[string]User{
		"bob": {Password: "p", Pool: Pool{MinConnections: 2, MaxConnections: 4}},
		"eve": {Password: "p", Pool: Pool{Mode: PoolModeSession}},
	}

	base := DefaultPool()
	base.Mode = PoolModeSession
	base.MaxConnections = 30
	base.IdleTimeout = time.Minute

	app := base
	app.Mode = PoolModeTransaction
	app.MaxConnections = 10
	app.ConnectTimeout = 2 * time.Second

	appBob := app
	appBob.MinConnections = 2
	appBob.MaxConnections = 4

	appEve := app
	appEve.Mode = PoolModeSession

	bob := base
	bob.MinConnections = 2
	bob.MaxConnections = 4

	tests := []struct {
		name, database, user string
		want                 Pool
	}{
		{"an unknown database and user get the top-level pool over the defaults", "other", "nobody", base},
		{"a database without a pool section inherits everything", "reports", "", base},
		{"a database overrides only the fields it sets", "app", "", app},
		{"a user overrides the database field by field", "app", "bob", appBob},
		{"a user mode overrides the database mode", "app", "eve", appEve},
		{"a user applies without a database section", "other", "bob", bob},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, c.PoolFor(tt.database, tt.user))
		})
	}

	t.Run("mode defaults to pool_mode when no section sets it", func(t *testing.T) {
		c := validConfig()
		c.PoolMode = PoolModeSession
		assert.Equal(t, PoolModeSession, c.PoolFor("a", "b").Mode)
	})
	t.Run("pool.mode beats pool_mode", func(t *testing.T) {
		c := validConfig()
		c.Pool.Mode = PoolModeSession
		assert.Equal(t, PoolModeSession, c.PoolFor("a", "b").Mode)
	})
}

func TestEffectiveAuthMethod(t *testing.T) {
	tests := []struct {
		name   string
		method AuthMethod
		users  map[string]User
		want   AuthMethod
	}{
		{"no users and no method means trust", "", nil, AuthTrust},
		{"users and no method means scram-sha-256", "", map[string]User{"bob": {}}, AuthSCRAM},
		{"an explicit method wins without users", AuthMD5, nil, AuthMD5},
		{"an explicit method wins with users", AuthTrust, map[string]User{"bob": {}}, AuthTrust},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Auth: Auth{Method: tt.method}, Users: tt.users}
			assert.Equal(t, tt.want, c.EffectiveAuthMethod())
		})
	}
}

func TestBackendDatabaseRenamesOnlyWhenNameIsSet(t *testing.T) {
	c := Config{Databases: map[string]Database{
		"app":  {Name: "app_prod"},
		"logs": {Pool: Pool{MaxConnections: 1}},
	}}
	assert.Equal(t, "app_prod", c.BackendDatabase("app"))
	assert.Equal(t, "logs", c.BackendDatabase("logs"))
	assert.Equal(t, "other", c.BackendDatabase("other"))
}

func TestParseBackend(t *testing.T) {
	tests := []struct {
		name, in string
		want     Backend
		err      string
	}{
		{"a host alone gets the default port", "db", Backend{Host: "db", Port: 5432}, ""},
		{"a host and port are split", "db.example.com:6543", Backend{Host: "db.example.com", Port: 6543}, ""},
		{"an IPv4 address and port are split", "10.0.0.1:5433", Backend{Host: "10.0.0.1", Port: 5433}, ""},
		{"a bracketed IPv6 address alone gets the default port", "[::1]", Backend{Host: "::1", Port: 5432}, ""},
		{"a bracketed IPv6 address and port are split", "[2001:db8::1]:5434", Backend{Host: "2001:db8::1", Port: 5434}, ""},
		{"a socket directory alone is a host", "/var/run/postgresql", Backend{Host: "/var/run/postgresql", Port: 5432}, ""},
		{"a socket directory takes a port", "/tmp:5433", Backend{Host: "/tmp", Port: 5433}, ""},
		{"an empty string is refused", "", Backend{}, "empty address"},
		{"an empty host is refused", ":5432", Backend{}, "empty host"},
		{"an empty port is refused", "db:", Backend{}, "empty port"},
		{"a zero port is refused", "db:0", Backend{}, "port must be a number from 1 to 65535"},
		{"a port above 65535 is refused", "db:65536", Backend{}, "port must be a number"},
		{"a named port is refused", "db:postgres", Backend{}, "port must be a number"},
		{"an unbracketed IPv6 address is refused", "::1", Backend{}, "needs brackets"},
		{"an unclosed bracket is refused", "[::1:5432", Backend{}, "missing ']'"},
		{"empty brackets are refused", "[]:5432", Backend{}, "empty host"},
		{"junk after brackets is refused", "[::1]5432", Backend{}, "want host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ParseBackend(tt.in)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, b)
		})
	}
}

func TestBackendAddrJoinsHostAndPort(t *testing.T) {
	assert.Equal(t, "db:6543", Backend{Host: "db", Port: 6543}.Addr())
	assert.Equal(t, "db:5432", Backend{Host: "db"}.Addr(), "port 0 means the default")
	assert.Equal(t, "[::1]:5432", Backend{Host: "::1", Port: 5432}.Addr())
}
