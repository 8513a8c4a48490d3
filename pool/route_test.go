package pool_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
)

func clusterConfig(t *testing.T, replicas ...string) *config.Config {
	t.Helper()
	cfg := config.Default()
	var err error
	cfg.Primary, err = config.ParseBackend(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	for _, r := range replicas {
		b, err := config.ParseBackend(r)
		require.NoError(t, err)
		cfg.Replicas = append(cfg.Replicas, b)
	}
	cfg.BackendTLS.SSLMode = "disable"
	cfg.Routing.CheckPeriod = 50 * time.Millisecond
	require.NoError(t, cfg.Validate())
	return &cfg
}

func TestRouteSendsReadsToACaughtUpReplicaAndEverythingElseToThePrimary(t *testing.T) {
	c := pool.NewCluster(clusterConfig(t, pgtest.Get().ReplicaAddr), zap.NewNop())
	defer c.Close()

	write, err := c.Route("postgres", "postgres", false, 0)
	require.NoError(t, err)
	assert.False(t, write.Replica())
	write.Done(c, nil)

	read, err := c.Route("postgres", "postgres", true, 0)
	require.NoError(t, err)
	assert.True(t, read.Replica())
	read.Done(c, nil)

	// A read that must see a position the replica has not replayed is
	// checked on the replica, and refused there.
	stale, err := c.Route("postgres", "postgres", true, pool.LSN(1<<62))
	require.NoError(t, err)
	require.True(t, stale.Replica())
	require.Equal(t, pool.LSN(1<<62), stale.MinLSN)
	conn, err := stale.Pool.Acquire(context.Background())
	require.NoError(t, err)
	assert.False(t, c.ReplayedOn(context.Background(), stale, conn))
	conn.Release()
	stale.Done(c, nil)
	rs := c.RoutingStats()
	assert.EqualValues(t, 1, rs.StaleReadsAvoided)
	assert.EqualValues(t, 2, rs.RoutedReplica)
	assert.EqualValues(t, 1, rs.RoutedPrimary)
	require.Len(t, rs.Replicas, 1)
	assert.True(t, rs.Replicas[0].Healthy)
	assert.NotEqual(t, "0/0", rs.Replicas[0].ReplayLSN)
}

func TestAnUnreachableReplicaIsEjectedAndReadsFallBackToThePrimary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close()
	c := pool.NewCluster(clusterConfig(t, dead), zap.NewNop())
	defer c.Close()
	r, err := c.Route("postgres", "postgres", true, 0)
	require.NoError(t, err)
	assert.False(t, r.Replica())
	rs := c.RoutingStats()
	assert.False(t, rs.Replicas[0].Healthy)
	assert.NotEmpty(t, rs.Replicas[0].LastError)
	assert.EqualValues(t, 1, rs.Fallbacks)
}

func TestParseLSNReadsPostgresText(t *testing.T) {
	l, err := pool.ParseLSN("16/B374D848")
	require.NoError(t, err)
	assert.Equal(t, pool.LSN(0x16B374D848), l)
	assert.Equal(t, "16/B374D848", l.String())
	_, err = pool.ParseLSN("nope")
	assert.Error(t, err)
}
