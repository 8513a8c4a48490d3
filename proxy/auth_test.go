package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

// scramSecretOf reads the SCRAM secret Postgres stored for role.
func scramSecretOf(t *testing.T, role string) string {
	t.Helper()
	conn := connect(t, directDSN("postgres", "postgres", ""), pgx.QueryExecModeExec)
	var secret string
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&secret))
	return secret
}

func TestClientAuthenticationAcceptsTheRightPasswordOnly(t *testing.T) {
	secret := scramSecretOf(t, "kproxy_scram") // the harness gives it password scram-pass
	tests := []struct {
		name     string
		method   config.AuthMethod
		user     config.User
		password string
	}{
		{"md5 with a plain password", config.AuthMD5, config.User{Password: "s3cret"}, "s3cret"},
		{"scram with a plain password", config.AuthSCRAM, config.User{Password: "s3cret"}, "s3cret"},
		{"scram with a Postgres SCRAM secret", config.AuthSCRAM, config.User{SCRAMSecret: secret}, "scram-pass"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, func(c *config.Config) {
				c.Auth.Method = tt.method
				c.Users = map[string]config.User{"postgres": tt.user}
			})
			conn, err := tryConnect(p.DSN("postgres", "postgres", "password="+tt.password))
			require.NoError(t, err)
			var one int
			require.NoError(t, conn.QueryRow(context.Background(), "SELECT 1").Scan(&one))
			conn.Close(context.Background())

			_, err = tryConnect(p.DSN("postgres", "postgres", "password=wrong"))
			requireSQLState(t, err, "28P01")
			_, err = tryConnect(p.DSN("nobody", "postgres", "password="+tt.password))
			requireSQLState(t, err, "28P01")
		})
	}
}

func TestTrustNeedsNoUserList(t *testing.T) {
	p := startProxy(t, nil)
	conn, err := tryConnect(p.DSN("postgres", "postgres", ""))
	require.NoError(t, err)
	conn.Close(context.Background())
}

func TestBackendPasswordsAreUsedWhenPostgresAsksForThem(t *testing.T) {
	tests := []struct {
		role, password string
		method         config.AuthMethod
	}{
		{"kproxy_scram", "scram-pass", config.AuthSCRAM},
		{"kproxy_md5", "md5-pass", config.AuthMD5},
	}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			p := startProxy(t, func(c *config.Config) {
				c.Auth.Method = tt.method
				c.Users = map[string]config.User{tt.role: {Password: tt.password}}
			})
			conn, err := tryConnect(p.DSN(tt.role, "postgres", "password="+tt.password))
			require.NoError(t, err)
			var who string
			require.NoError(t, conn.QueryRow(context.Background(), "SELECT current_user").Scan(&who))
			assert.Equal(t, tt.role, who)
			conn.Close(context.Background())
		})
	}
	t.Run("a wrong backend password is Postgres' 28P01", func(t *testing.T) {
		p := startProxy(t, func(c *config.Config) {
			c.Users = map[string]config.User{"kproxy_scram": {Password: "client-pass", BackendPassword: "wrong"}}
		})
		_, err := tryConnect(p.DSN("kproxy_scram", "postgres", "password=client-pass"))
		requireSQLState(t, err, "28P01")
	})
}

func writeSelfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

func TestClientsCanUseTLSWhenACertificateIsConfigured(t *testing.T) {
	certFile, keyFile := writeSelfSignedCert(t)
	p := startProxy(t, func(c *config.Config) {
		c.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile}
		c.Auth.Method = config.AuthSCRAM
		c.Users = map[string]config.User{"postgres": {Password: "pw"}}
	})
	conn, err := tryConnect("host=" + p.Host + " port=" + p.Port + " user=postgres dbname=postgres password=pw sslmode=require")
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, isTLS := conn.PgConn().Conn().(*tls.Conn)
	assert.True(t, isTLS, "connection is not encrypted")
	var one int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT 1").Scan(&one))
}

func TestBackendConnectionsHonourSSLMode(t *testing.T) {
	for _, tt := range []struct {
		sslmode string
		want    bool
	}{{"require", true}, {"disable", false}} {
		t.Run(tt.sslmode, func(t *testing.T) {
			p := startProxy(t, func(c *config.Config) { c.BackendTLS.SSLMode = tt.sslmode })
			conn, err := tryConnect(p.DSN("postgres", "postgres", ""))
			require.NoError(t, err)
			defer conn.Close(context.Background())
			var ssl bool
			require.NoError(t, conn.QueryRow(context.Background(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl))
			assert.Equal(t, tt.want, ssl)
		})
	}
}
