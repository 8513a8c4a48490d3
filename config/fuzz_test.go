package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"",
		"primary: db\n",
		"primary: {host: db, port: 5432}\nreplicas: [r1, {host: r2, port: 1}]\n",
		"databases: {app: {name: x, pool: {mode: session, max_connections: 3}}}\n",
		"users: {bob: {password: p, scram_secret: 'SCRAM-SHA-256$4096:c2FsdA==$a:b'}}\n",
		"pool: &p {max_connections: 1}\ndatabases: {a: {pool: {<<: *p, idle_timeout: 1m}}}\n",
		"databases: {a: &a {<<: *a}}\n",
		"? [a]\n: b\n",
		"a: 1\n---\nb: 2\n",
		"shutdown_timeout: 1m30s\nmax_message_bytes: 0x400\n",
		"workflows: {w: {params: [a], nodes: [{id: q, kind: sql, sql: x, args: [params.a], fallback: {value: {a: [1]}}}]}}\n",
		"workflows: {w: {nodes: [{id: m, kind: map, items: params.x, body: {kind: http, url: 'http://h', body: item}}]}}\n",
		"workflows: {w: {nodes: [{id: s, kind: merge, inputs: &i {a: b, <<: {c: d}}}, {id: t, kind: merge, inputs: *i}]}}\n",
		"workflow_resilience: {breakers: {b: {}}, rate_limits: {r: {per_second: 1.5}}}\n",
		"workflows: {w: {nodes: [&n {id: m, kind: map, items: params.x, body: *n}]}}\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path, []string{"KPROXY_PRIMARY=db"})
		if err == nil {
			// What Load accepts must stay valid.
			if err := c.Validate(); err != nil {
				t.Fatalf("Load accepted a config Validate refuses: %v", err)
			}
			return
		}
		var ve *ValidationError
		if errors.As(err, &ve) && len(ve.Problems) == 0 {
			t.Fatal("a ValidationError with no problems")
		}
		_ = err.Error()
	})
}

func FuzzParseBackend(f *testing.F) {
	for _, seed := range []string{"db", "db:5432", "[::1]:5432", "/tmp:5433", "::1", "[", ":"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBackend(s)
		if err != nil {
			return
		}
		if b.Host == "" || b.Port == 0 {
			t.Fatalf("ParseBackend(%q) = %+v without an error", s, b)
		}
		// Anything parsed, except a socket path, must survive Addr.
		if s[0] != '/' {
			again, err := ParseBackend(b.Addr())
			if err != nil || again != b {
				t.Fatalf("ParseBackend(%q).Addr() = %q parses to %+v, %v", s, b.Addr(), again, err)
			}
		}
	})
}

func FuzzParseSCRAMSecret(f *testing.F) {
	f.Add("SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Add("SCRAM-SHA-256$")
	f.Fuzz(func(t *testing.T, s string) {
		sec, err := ParseSCRAMSecret(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedSCRAMSecret) {
				t.Fatalf("error does not wrap ErrMalformedSCRAMSecret: %v", err)
			}
			return
		}
		if sec.Iterations < 1 || len(sec.Salt) == 0 || len(sec.StoredKey) != 32 || len(sec.ServerKey) != 32 {
			t.Fatalf("accepted %q as %+v", s, sec)
		}
	})
}
