package proxy_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/proxy"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// testProxy is a kproxy server running in the test process against the test
// cluster's primary.
type testProxy struct {
	Addr    string
	Host    string
	Port    string
	Server  *proxy.Server
	Cluster *pool.Cluster
	Config  *config.Config
}

// startProxy starts kproxy on a free loopback port; edit may change the
// configuration first. The proxy is shut down when the test ends.
func startProxy(t testing.TB, edit func(*config.Config)) *testProxy {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	primary, err := config.ParseBackend(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	cfg.Primary = primary
	cfg.BackendTLS.SSLMode = "disable"
	cfg.Pool.AcquireTimeout = 10 * time.Second
	if e := os.Getenv("KPROXY_TEST_RELAY_ENGINE"); e != "" {
		cfg.RelayEngine = e // the whole suite runs on either engine
	}
	if edit != nil {
		edit(&cfg)
	}
	require.NoError(t, cfg.Validate())

	log := zap.NewNop()
	if os.Getenv("KPROXY_TEST_LOG") != "" {
		log, _ = zap.NewDevelopment()
	}
	cluster := pool.NewCluster(&cfg, log)
	srv, err := proxy.New(&cfg, cluster, log)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
		cluster.Close()
	})
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	return &testProxy{Addr: ln.Addr().String(), Host: host, Port: port, Server: srv, Cluster: cluster, Config: &cfg}
}

// DSN is a libpq connection string to the proxy; extra is appended as is.
func (p *testProxy) DSN(user, database, extra string) string {
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable %s", p.Host, p.Port, user, database, extra)
}

// directDSN is a libpq connection string to the test cluster's primary.
func directDSN(user, database, extra string) string {
	host, port, _ := net.SplitHostPort(pgtest.Get().PrimaryAddr)
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable %s", host, port, user, database, extra)
}

func transactionMode(max int) func(*config.Config) {
	return func(c *config.Config) {
		c.PoolMode = config.PoolModeTransaction
		c.Pool.MaxConnections = max
	}
}

func sessionMode(max int) func(*config.Config) {
	return func(c *config.Config) {
		c.PoolMode = config.PoolModeSession
		c.Pool.MaxConnections = max
	}
}
