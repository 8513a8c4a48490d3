package pool

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgtest"
)

// newTestWorkloadStore returns a store on the test cluster's Redis under a
// key of the test's own, which is deleted when the test ends.
func newTestWorkloadStore(t *testing.T) *WorkloadStore {
	t.Helper()
	key := fmt.Sprintf("kproxy:test:%s:%d", t.Name(), time.Now().UnixNano())
	s := NewWorkloadStore(pgtest.Get().RedisAddr, key)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, s.rdb.Del(ctx, key).Err())
		assert.NoError(t, s.Close())
	})
	return s
}

func TestWorkloadStoreSavesASnapshotThatLoadsIntoTheSameForecast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := syntheticWorkload(t, 3)
	s := newTestWorkloadStore(t)

	require.NoError(t, s.Save(ctx, w.Snapshot()))
	snap, ok, err := s.Load(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	restored := NewWorkload(100)
	restored.Restore(snap)

	for _, at := range workloadForecastTimes {
		assert.Equal(t, w.Forecast(at, 30*time.Minute, 0.2), restored.Forecast(at, 30*time.Minute, 0.2), "at %v", at)
	}
	assert.Equal(t, w.FrequentPatterns(0), restored.FrequentPatterns(0))

	ttl, err := s.rdb.TTL(ctx, s.key).Result()
	require.NoError(t, err)
	assert.InDelta(t, 30*24*time.Hour, ttl, float64(time.Minute), "the key expires 30 days after the save")
}

func TestWorkloadStoreLoadOfAnAbsentKeyIsFalse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := newTestWorkloadStore(t)

	snap, ok, err := s.Load(ctx)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Equal(t, WorkloadSnapshot{}, snap)
}

func TestWorkloadStoreLoadOfGarbageIsAnError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := newTestWorkloadStore(t)
	require.NoError(t, s.rdb.Set(ctx, s.key, "not json", time.Minute).Err())

	_, ok, err := s.Load(ctx)
	assert.Error(t, err)
	assert.False(t, ok)
}

func TestWorkloadStoreFailsInsteadOfHangingOnABadAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := ln.Addr().String()
	require.NoError(t, ln.Close())

	silent := silentServer(t)

	for _, tt := range []struct {
		name, addr string
		timeout    time.Duration // of the context; 0 for none
	}{
		{"a server that never answers", silent, 500 * time.Millisecond},
		{"a closed port", refused, 500 * time.Millisecond},
		{"a closed port without a context deadline", refused, 0},
		{"an address that goes nowhere", "192.0.2.1:6379", 500 * time.Millisecond}, // TEST-NET-1
		{"an address without a port", "127.0.0.1", 500 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := NewWorkloadStore(tt.addr, "kproxy:test:unreachable")
			defer func() { assert.NoError(t, s.Close()) }()
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}

			start := time.Now()
			assert.Error(t, s.Save(ctx, NewWorkload(1).Snapshot()))
			_, ok, err := s.Load(ctx)
			assert.Error(t, err)
			assert.False(t, ok)
			assert.Less(t, time.Since(start), 5*time.Second)
		})
	}
}

// silentServer listens on a loopback port, accepts connections and never
// answers, until the test ends. It returns the address.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted := make(chan net.Conn, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestWorkloadStoreCloseIsIdempotent(t *testing.T) {
	s := NewWorkloadStore(pgtest.Get().RedisAddr, "kproxy:test:close")
	require.NoError(t, s.Close())
	assert.NoError(t, s.Close())
	assert.Error(t, s.Save(context.Background(), WorkloadSnapshot{}))
}
