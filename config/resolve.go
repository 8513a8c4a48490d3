package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// EffectiveAuthMethod returns Auth.Method, or its default when empty:
// AuthTrust with no users configured, AuthSCRAM otherwise.
func (c *Config) EffectiveAuthMethod() AuthMethod {
	switch {
	case c.Auth.Method != "":
		return c.Auth.Method
	case len(c.Users) == 0:
		return AuthTrust
	default:
		return AuthSCRAM
	}
}

// PoolFor returns the pool settings for a client connecting as user to
// database: DefaultPool, overridden by Pool, by the database's pool, then by
// the user's, field by field, where a zero field inherits. An empty Mode
// becomes PoolMode. Unknown database or user names simply add nothing.
func (c *Config) PoolFor(database, user string) Pool {
	return mergePools(c.PoolMode, c.Pool, c.Databases[database].Pool, c.Users[user].Pool)
}

// mergePools lays layers over DefaultPool in order; zero fields inherit.
func mergePools(mode PoolMode, layers ...Pool) Pool {
	p := DefaultPool()
	for _, l := range layers {
		over(&p.Mode, l.Mode)
		over(&p.MinConnections, l.MinConnections)
		over(&p.MaxConnections, l.MaxConnections)
		over(&p.PrewarmConnections, l.PrewarmConnections)
		over(&p.AcquireTimeout, l.AcquireTimeout)
		over(&p.MaxLifetime, l.MaxLifetime)
		over(&p.MaxLifetimeJitter, l.MaxLifetimeJitter)
		over(&p.IdleTimeout, l.IdleTimeout)
		over(&p.HealthCheckPeriod, l.HealthCheckPeriod)
		over(&p.ConnectTimeout, l.ConnectTimeout)
		over(&p.MaxPreparedStatements, l.MaxPreparedStatements)
		over(&p.AdaptiveSizing, l.AdaptiveSizing)
		over(&p.SizingInterval, l.SizingInterval)
		over(&p.ShrinkCooldown, l.ShrinkCooldown)
		over(&p.TargetUtilizationPercent, l.TargetUtilizationPercent)
		over(&p.HealthThreshold, l.HealthThreshold)
		over(&p.PatternLearning, l.PatternLearning)
	}
	if p.Mode == "" {
		p.Mode = mode
	}
	return p
}

func over[T comparable](dst *T, v T) {
	var zero T
	if v != zero {
		*dst = v
	}
}

// BackendDatabase returns the database name to use on the backend for a
// client that asked for database: Databases[database].Name when set,
// otherwise database itself.
func (c *Config) BackendDatabase(database string) string {
	if name := c.Databases[database].Name; name != "" {
		return name
	}
	return database
}

// ParseBackend parses "host", "host:port", "[ipv6]" or "[ipv6]:port". An
// omitted port is DefaultPort. A host starting with "/" is a Unix socket
// directory, optionally followed by ":port".
func ParseBackend(s string) (Backend, error) {
	host, port, err := splitBackend(s)
	if err != nil {
		return Backend{}, fmt.Errorf("backend %q: %s", s, err)
	}
	if strings.ContainsAny(host, "[]") || strings.IndexFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return Backend{}, fmt.Errorf("backend %q: invalid host %q", s, host)
	}
	b := Backend{Host: host, Port: DefaultPort}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Backend{}, fmt.Errorf("backend %q: port must be a number from 1 to 65535", s)
		}
		b.Port = uint16(n)
	}
	return b, nil
}

// splitBackend splits s into host and port; port is "" when omitted.
func splitBackend(s string) (host, port string, err error) {
	if s == "" {
		return "", "", errors.New("empty address")
	}
	hasPort := func(rest string) (string, error) {
		if rest == "" {
			return "", nil
		}
		if rest[0] != ':' || len(rest) == 1 {
			return "", errors.New("want host:port")
		}
		return rest[1:], nil
	}
	switch {
	case strings.HasPrefix(s, "/"):
		if i := strings.LastIndexByte(s, ':'); i > 0 {
			return s[:i], s[i+1:], nil
		}
		return s, "", nil
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("missing ']'")
		}
		host = s[1:end]
		if host == "" {
			return "", "", errors.New("empty host")
		}
		port, err = hasPort(s[end+1:])
		return host, port, err
	}
	switch strings.Count(s, ":") {
	case 0:
		return s, "", nil
	case 1:
		host, port, _ = strings.Cut(s, ":")
		if host == "" {
			return "", "", errors.New("empty host")
		}
		if port == "" {
			return "", "", errors.New("empty port")
		}
		return host, port, nil
	default:
		return "", "", errors.New("an IPv6 address needs brackets, like [::1]:5432")
	}
}

// Addr returns "host:port" for dialling, with DefaultPort when Port is 0.
func (b Backend) Addr() string {
	port := b.Port
	if port == 0 {
		port = DefaultPort
	}
	return net.JoinHostPort(b.Host, strconv.Itoa(int(port)))
}
