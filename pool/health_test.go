package pool_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
)

func TestAConnectionThatKeepsFailingIsRecycled(t *testing.T) {
	p := newPool(t, func(l *config.Pool) { l.MaxConnections = 1 })
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	require.NoError(t, err)
	first := c.PID()
	assert.Equal(t, 100, c.Health(), "a new connection is fully healthy")
	for range 4 {
		c.NoteFailure() // 100 → 60: still above the threshold of 50
	}
	p.Release(c)
	c, err = p.Acquire(ctx)
	require.NoError(t, err)
	assert.Equal(t, first, c.PID(), "kept while at or above the threshold")
	assert.Equal(t, 60, c.Health())
	c.NoteFailure()
	c.NoteFailure() // 40: below the threshold
	p.Release(c)

	st := p.Stats()
	assert.Equal(t, int64(1), st.Connections.Recycled)
	c, err = p.Acquire(ctx)
	require.NoError(t, err)
	assert.NotEqual(t, first, c.PID(), "a fresh connection replaces the unhealthy one")
	assert.Equal(t, 100, c.Health())
	p.Release(c)
}

func TestPoolHealthIsTheMeanOfItsConnections(t *testing.T) {
	p := newPool(t, func(l *config.Pool) { l.MaxConnections = 2 })
	ctx := context.Background()
	a, err := p.Acquire(ctx)
	require.NoError(t, err)
	b, err := p.Acquire(ctx)
	require.NoError(t, err)
	a.NoteFailure()
	a.NoteFailure()
	st := p.Stats()
	assert.InDelta(t, 90, st.Health.Score, 0.001)
	assert.ElementsMatch(t, []int{80, 100}, st.CurrentState.HealthScores)
	assert.Equal(t, 2, st.CurrentState.Active)
	p.Release(a)
	p.Release(b)
	st = p.Stats()
	assert.Equal(t, 2, st.CurrentState.Available)
}

func TestLivenessChecksRaiseTheScore(t *testing.T) {
	p := newPool(t, func(l *config.Pool) {
		l.MaxConnections = 1
		l.HealthCheckPeriod = 50 * time.Millisecond
	})
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	require.NoError(t, err)
	pid := c.PID()
	c.NoteFailure()
	c.NoteFailure()
	c.NoteFailure() // 70
	p.Release(c)
	// The maintenance goroutine pings idle connections; each pass is +5.
	require.Eventually(t, func() bool {
		st := p.Stats()
		return len(st.Servers) == 1 && st.Servers[0].Health > 70
	}, 10*time.Second, 20*time.Millisecond)
	c, err = p.Acquire(ctx)
	require.NoError(t, err)
	assert.Equal(t, pid, c.PID())
	p.Release(c)
}

func TestShrinkingClosesIdleConnectionsAndNeverABusyOne(t *testing.T) {
	p := newPool(t, func(l *config.Pool) {
		l.MaxConnections = 4
		l.MinConnections = 1
		l.AdaptiveSizing = true
	})
	p.SetCapacity(4)
	ctx := context.Background()
	a, err := p.Acquire(ctx)
	require.NoError(t, err)
	b, err := p.Acquire(ctx)
	require.NoError(t, err)
	c, err := p.Acquire(ctx)
	require.NoError(t, err)
	p.Release(c) // one idle, two busy
	require.Equal(t, 3, p.Stats().Open)

	p.SetCapacity(1)
	st := p.Stats()
	assert.Equal(t, 1, st.Capacity)
	assert.Equal(t, 2, st.Open, "the idle one closed; the busy ones stay")
	assert.Equal(t, 2, st.Active)
	require.NoError(t, a.Ping(ctx), "a busy connection still works")
	p.Release(a) // above capacity: closed
	p.Release(b)
	st = p.Stats()
	assert.Equal(t, 1, st.Open)
	p.SetCapacity(0)
	assert.Equal(t, 1, p.Capacity(), "never below min_connections")
	p.SetCapacity(100)
	assert.Equal(t, 4, p.Capacity(), "never above max_connections")
}
