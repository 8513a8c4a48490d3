package pool

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
)

func TestAPredictedPeakIsPrewarmedAndABusyPoolGrowsWithinItsBudget(t *testing.T) {
	host, port, err := net.SplitHostPort(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	cfg := config.Default()
	cfg.Primary = config.Backend{Host: host, Port: uint16(n)}
	cfg.BackendTLS.SSLMode = "disable"
	cfg.Pool.MinConnections = 1
	cfg.Pool.MaxConnections = 30
	cfg.Pool.AdaptiveSizing = true
	cfg.Pool.PatternLearning = true
	cfg.Pool.SizingInterval = time.Hour // the test drives the sizer itself
	require.NoError(t, cfg.Validate())
	c := NewCluster(&cfg, zap.NewNop())
	t.Cleanup(c.Close)
	p, err := c.Primary("postgres", "postgres")
	require.NoError(t, err)
	require.Equal(t, 1, p.Capacity())

	// Three weeks in which this hour of the week kept 5 connections busy.
	now := time.Now()
	w := p.workload.Load()
	require.NotNil(t, w)
	for week := 1; week <= 3; week++ {
		for range 5 { // five connections held for the 2 hours around this time
			w.Record(42, "SELECT report()", now.Add(-time.Duration(week)*7*24*time.Hour).Truncate(time.Hour).Add(-time.Hour), 3*time.Hour)
		}
	}
	f := w.Forecast(now, forecastHorizon, forecastHeadroom)
	require.Equal(t, 6, f.RecommendedPoolSize, "5 busy × 1.2")

	c.sizeOnce(now) // the first round only takes a baseline
	c.sizeOnce(now.Add(time.Second))
	assert.GreaterOrEqual(t, p.Capacity(), 6, "grown to the forecast before the load arrives")
	require.Eventually(t, func() bool { return p.Stats().Open >= 6 }, 10*time.Second, 20*time.Millisecond,
		"connections opened ahead of the peak")
	st := p.Stats()
	require.NotNil(t, st.Sizing)
	assert.Equal(t, 6, st.Sizing.Forecast)
	assert.Positive(t, c.Budget(p.cfg.Addr), "the budget was read from the server")
	assert.LessOrEqual(t, st.Open, c.Budget(p.cfg.Addr))
	require.NotNil(t, st.Workload)
	assert.Equal(t, "SELECT report()", st.Workload.FrequentPatterns[0].Example)
}

func TestLearnedWorkloadOutlivesARestartThroughRedis(t *testing.T) {
	host, port, err := net.SplitHostPort(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	newCluster := func() (*Cluster, *Pool) {
		cfg := config.Default()
		cfg.Primary = config.Backend{Host: host, Port: uint16(n)}
		cfg.BackendTLS.SSLMode = "disable"
		cfg.Pool.PatternLearning = true
		cfg.Learning.RedisAddr = pgtest.Get().RedisAddr
		cfg.Learning.RedisKey = "kproxy-test:" + t.Name() + ":" + strconv.FormatInt(time.Now().UnixNano(), 36)
		cfg.Pool.SizingInterval = time.Hour
		require.NoError(t, cfg.Validate())
		c := NewCluster(&cfg, zap.NewNop())
		p, err := c.Primary("postgres", "postgres")
		require.NoError(t, err)
		return c, p
	}
	c, p := newCluster()
	key := c.cfg.Learning.RedisKey
	now := time.Now()
	for range 3 {
		p.workload.Load().Record(7, "SELECT 1", now.Add(-7*24*time.Hour), 10*time.Millisecond)
	}
	c.Close() // saves

	c2, p2 := newCluster()
	c2.cfg.Learning.RedisKey = key
	defer c2.Close()
	c2.restoreWorkload(p2, poolKey{p2.cfg.Addr, "postgres", "postgres"}, c2.cfg.Learning.RedisAddr, key)
	pats := p2.workload.Load().FrequentPatterns(1)
	require.Len(t, pats, 1)
	assert.Equal(t, int64(3), pats[0].Count)
	assert.Equal(t, "SELECT 1", pats[0].Example)
}

func TestAlertsFollowTheRecommendedThresholds(t *testing.T) {
	s := &Stats{Capacity: 10}
	s.Performance = Performance{Utilization: 0.95, P99AcquisitionMs: 150, QueriesPerConn: 3}
	s.Queries = QueryCounts{Executed: 1000, Errors: 60, ErrorRate: 0.06}
	s.Health = PoolHealth{Unhealthy: 3}
	var names []string
	for _, a := range alerts(s) {
		names = append(names, a.Name)
		assert.NotEmpty(t, a.Recommendation)
	}
	assert.Equal(t, []string{"high_utilization", "high_error_rate", "unhealthy_connections", "slow_acquisition", "low_reuse"}, names)

	s.Performance = Performance{Utilization: 0.9, P99AcquisitionMs: 100, QueriesPerConn: 10}
	s.Queries = QueryCounts{Executed: 1000, Errors: 50, ErrorRate: 0.05}
	s.Health = PoolHealth{Unhealthy: 2}
	assert.Empty(t, alerts(s), "at the thresholds, nothing is raised")
}
