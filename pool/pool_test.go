package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

func newPool(t testing.TB, edit func(*config.Pool)) *pool.Pool {
	t.Helper()
	host, port, err := net.SplitHostPort(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	limits := config.DefaultPool()
	limits.MaxConnections = 2
	limits.AcquireTimeout = time.Second
	if edit != nil {
		edit(&limits)
	}
	p, err := pool.New(pool.Config{
		Addr: net.JoinHostPort(host, port), Host: host, Port: uint16(n),
		Database: "postgres", User: "postgres", SSLMode: "disable", Limits: limits,
	}, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

func TestAcquireOpensUpToMaxThenWaitsForARelease(t *testing.T) {
	p := newPool(t, nil)
	ctx := context.Background()
	a, err := p.Acquire(ctx)
	require.NoError(t, err)
	b, err := p.Acquire(ctx)
	require.NoError(t, err)
	assert.NotEqual(t, a.PID(), b.PID())

	got := make(chan *pool.Conn)
	go func() {
		c, err := p.Acquire(ctx)
		assert.NoError(t, err)
		got <- c
	}()
	require.Eventually(t, func() bool { return p.Stats().Waiting == 1 }, 2*time.Second, 5*time.Millisecond)
	p.Release(a)
	c := <-got
	assert.Equal(t, a.PID(), c.PID(), "the waiter should get the released connection")
	p.Release(b)
	p.Release(c)
	st := p.Stats()
	assert.Equal(t, 2, st.Open)
	assert.Equal(t, 2, st.Idle)
	assert.EqualValues(t, 2, st.Created)
}

func TestAcquireTimesOutWithErrAcquireTimeout(t *testing.T) {
	p := newPool(t, func(l *config.Pool) {
		l.MaxConnections = 1
		l.AcquireTimeout = 100 * time.Millisecond
	})
	c, err := p.Acquire(context.Background())
	require.NoError(t, err)
	_, err = p.Acquire(context.Background())
	require.ErrorIs(t, err, pool.ErrAcquireTimeout)
	assert.EqualValues(t, 1, p.Stats().AcquireTimeouts)
	assert.Zero(t, p.Stats().Waiting)
	p.Release(c)
}

func TestCancellingTheContextAbandonsTheWait(t *testing.T) {
	p := newPool(t, func(l *config.Pool) { l.MaxConnections = 1 })
	c, err := p.Acquire(context.Background())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err = p.Acquire(ctx)
	require.ErrorIs(t, err, context.Canceled)
	p.Release(c)
	c2, err := p.Acquire(context.Background())
	require.NoError(t, err)
	p.Release(c2)
}

func TestBrokenConnectionsAreClosedOnRelease(t *testing.T) {
	p := newPool(t, nil)
	c, err := p.Acquire(context.Background())
	require.NoError(t, err)
	c.MarkBroken()
	p.Release(c)
	st := p.Stats()
	assert.Zero(t, st.Open)
	assert.EqualValues(t, 1, st.Closed)
}

func TestSyncAppliesOnlyTheSettingsThatDiffer(t *testing.T) {
	p := newPool(t, nil)
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer p.Release(c)
	require.NoError(t, c.Sync(ctx, map[string]string{"application_name": "one", "TimeZone": "Asia/Tokyo"}))
	assert.Equal(t, "one", c.Params()["application_name"])
	assert.Equal(t, "Asia/Tokyo", c.Params()["TimeZone"])
	require.NoError(t, c.Sync(ctx, map[string]string{"application_name": "two"}))
	assert.Equal(t, "two", c.Params()["application_name"])
	assert.NotEqual(t, "Asia/Tokyo", c.Params()["TimeZone"], "TimeZone should be reset")
	assert.Equal(t, map[string]string{"application_name": "two"}, c.Settings())

	err = c.Sync(ctx, map[string]string{"no_such_setting_at_all": "x"})
	require.Error(t, err)
}

func TestUnreachableServerIsAConnectError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	p, err := pool.New(pool.Config{
		Addr: addr.String(), Host: "127.0.0.1", Port: uint16(addr.Port),
		Database: "postgres", User: "postgres", SSLMode: "disable", Limits: config.DefaultPool(),
	}, zap.NewNop())
	require.NoError(t, err)
	defer p.Close()
	_, err = p.Acquire(context.Background())
	var ce *pool.ConnectError
	require.True(t, errors.As(err, &ce), "got %v", err)
	assert.Equal(t, 0, p.Stats().Open)
}

func TestSetLimitsShrinksIdleConnectionsAndLetsWaitersIn(t *testing.T) {
	p := newPool(t, func(l *config.Pool) { l.MaxConnections = 3 })
	ctx := context.Background()
	var conns []*pool.Conn
	for range 3 {
		c, err := p.Acquire(ctx)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		p.Release(c)
	}
	l := p.Limits()
	l.MaxConnections = 1
	p.SetLimits(l)
	assert.Equal(t, 1, p.Stats().Open)

	held, err := p.Acquire(ctx)
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := p.Acquire(ctx)
		if assert.NoError(t, err) {
			p.Release(c)
		}
	}()
	require.Eventually(t, func() bool { return p.Stats().Waiting == 1 }, 2*time.Second, 5*time.Millisecond)
	l.MaxConnections = 2
	p.SetLimits(l)
	wg.Wait()
	p.Release(held)
}

func TestPrewarmAndMinConnectionsAreOpenedInTheBackground(t *testing.T) {
	p := newPool(t, func(l *config.Pool) {
		l.MaxConnections = 4
		l.PrewarmConnections = 3
		l.MinConnections = 2
	})
	require.Eventually(t, func() bool { return p.Stats().Idle == 3 }, 5*time.Second, 10*time.Millisecond)
}

func TestIdleConnectionsPastIdleTimeoutAreClosedDownToMin(t *testing.T) {
	p := newPool(t, func(l *config.Pool) {
		l.MaxConnections = 3
		l.MinConnections = 1
		l.IdleTimeout = 100 * time.Millisecond
	})
	ctx := context.Background()
	var conns []*pool.Conn
	for range 3 {
		c, err := p.Acquire(ctx)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		p.Release(c)
	}
	require.Eventually(t, func() bool { return p.Stats().Open == 1 }, 5*time.Second, 20*time.Millisecond)
}

func TestIdleConnectionsKilledOnTheServerFailTheirHealthCheck(t *testing.T) {
	p := newPool(t, func(l *config.Pool) {
		l.MaxConnections = 1
		l.HealthCheckPeriod = 50 * time.Millisecond
	})
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	require.NoError(t, err)
	pid := c.PID()
	p.Release(c)

	admin, err := pool.New(pool.Config{Addr: "admin", Host: "127.0.0.1", Port: portOf(t), Database: "postgres",
		User: "postgres", SSLMode: "disable", Limits: config.DefaultPool()}, zap.NewNop())
	require.NoError(t, err)
	defer admin.Close()
	ac, err := admin.Acquire(ctx)
	require.NoError(t, err)
	require.NoError(t, ac.Exec(ctx, "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+")"))
	admin.Release(ac)

	require.Eventually(t, func() bool { return p.Stats().Closed == 1 }, 5*time.Second, 20*time.Millisecond)
	c2, err := p.Acquire(ctx)
	require.NoError(t, err)
	assert.NotEqual(t, pid, c2.PID())
	require.NoError(t, c2.Ping(ctx))
	p.Release(c2)
}

func portOf(t *testing.T) uint16 {
	_, port, err := net.SplitHostPort(pgtest.Get().PrimaryAddr)
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return uint16(n)
}

func TestAcquirePreferringPicksAConnectionWhoseSettingsMatch(t *testing.T) {
	p := newPool(t, func(l *config.Pool) { l.MaxConnections = 3 })
	ctx := context.Background()
	var conns []*pool.Conn
	for i := range 3 {
		c, err := p.Acquire(ctx)
		require.NoError(t, err)
		require.NoError(t, c.Sync(ctx, map[string]string{"application_name": fmt.Sprint("app", i)}))
		conns = append(conns, c)
	}
	for _, c := range conns {
		p.Release(c)
	}
	want := map[string]string{"application_name": "app1"}
	c, err := p.AcquirePreferring(ctx, pool.SettingsKey(want))
	require.NoError(t, err)
	assert.Equal(t, conns[1].PID(), c.PID())
	p.Release(c)
	c, err = p.AcquirePreferring(ctx, pool.SettingsKey(map[string]string{"application_name": "other"}))
	require.NoError(t, err)
	assert.Equal(t, conns[1].PID(), c.PID(), "without a match, the most recently used")
	p.Release(c)
}

func TestCloseIdleClosesOnlyIdleConnections(t *testing.T) {
	p := newPool(t, func(l *config.Pool) { l.MaxConnections = 3 })
	ctx := context.Background()
	a, err := p.Acquire(ctx)
	require.NoError(t, err)
	b, err := p.Acquire(ctx)
	require.NoError(t, err)
	p.Release(b)
	p.CloseIdle()
	st := p.Stats()
	assert.Equal(t, 1, st.Open)
	assert.Zero(t, st.Idle)
	require.NoError(t, a.Ping(ctx))
	p.Release(a)
}
