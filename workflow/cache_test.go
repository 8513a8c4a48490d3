package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/workflow"
)

// lookupOrder counts its calls and outputs an order for its "id" input.
type lookupOrder struct{ calls atomic.Int32 }

func (l *lookupOrder) Run(_ context.Context, in workflow.Inputs) (any, error) {
	l.calls.Add(1)
	id, err := workflow.Input[int](in, "id")
	return map[string]any{"id": id, "total": 12.5}, err
}

// newRedis returns a client on the test cluster's Redis and a key prefix of
// the test's own; the test's keys are deleted when it ends.
func newRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: pgtest.Get().RedisAddr})
	prefix := fmt.Sprintf("kproxy:test:%s:%d:", t.Name(), time.Now().UnixNano())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, err := client.Keys(ctx, prefix+"*").Result()
		assert.NoError(t, err)
		if len(keys) > 0 {
			assert.NoError(t, client.Del(ctx, keys...).Err())
		}
		assert.NoError(t, client.Close())
	})
	return client, prefix
}

func TestCacheAsideServesRepeatedRunsFromTheCache(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	client, prefix := newRedis(t)
	tests := []struct {
		name  string
		cache workflow.Cache
		// want is the cached output as the cache gives it back.
		want any
	}{
		{"from the local cache, as stored", workflow.NewLocalCache(workflow.LocalCacheOptions{Size: 10, Clock: clock}),
			map[string]any{"id": 7, "total": 12.5}},
		{"from Redis, as JSON decodes it", workflow.NewRedisCache(client, prefix),
			map[string]any{"id": 7.0, "total": 12.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := &lookupOrder{}
			wf := build(t, workflow.New("cached").
				Add("order", node, workflow.WithCache(tt.cache, workflow.KeyFromInputs("order", "id"), time.Minute)).
				Add("use", echo).
				BindParam("order", "id", "id").
				Connect("order", "total", "use", "total"))
			rt := newRuntime(t, workflow.RuntimeOptions{})

			run, err := execute(t, rt, wf, map[string]any{"id": 7})
			require.NoError(t, err)
			assert.Equal(t, workflow.OutcomeOK, nodeTrace(t, run, "order").Outcome)

			run, err = execute(t, rt, wf, map[string]any{"id": 7})
			require.NoError(t, err)
			tr := nodeTrace(t, run, "order")
			assert.Equal(t, workflow.OutcomeCached, tr.Outcome)
			assert.Equal(t, 0, tr.Attempts)
			v, _ := run.Result("order")
			assert.Equal(t, tt.want, v)
			total, _ := run.Lookup("use", "total")
			assert.Equal(t, 12.5, total)
			assert.Equal(t, int32(1), node.calls.Load())

			_, err = execute(t, rt, wf, map[string]any{"id": 8})
			require.NoError(t, err)
			assert.Equal(t, int32(2), node.calls.Load(), "another key misses")
		})
	}
}

func TestLocalCacheEntriesExpireAfterTheirTTL(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	cache := workflow.NewLocalCache(workflow.LocalCacheOptions{Clock: clock})
	node := &lookupOrder{}
	wf := build(t, workflow.New("ttl").
		Add("order", node, workflow.WithCache(cache, workflow.KeyFromInputs("order", "id"), time.Minute)).
		BindParam("order", "id", "id"))
	rt := newRuntime(t, workflow.RuntimeOptions{})
	for _, step := range []struct {
		advance time.Duration
		want    workflow.Outcome
	}{{0, "ok"}, {59 * time.Second, "cached"}, {time.Second, "ok"}, {30 * time.Second, "cached"}} {
		clock.Advance(step.advance)
		run, err := execute(t, rt, wf, map[string]any{"id": 1})
		require.NoError(t, err)
		assert.Equal(t, step.want, nodeTrace(t, run, "order").Outcome, "after %v more", step.advance)
	}
	assert.Equal(t, int32(2), node.calls.Load())
}

func TestLocalCacheEvictsTheLeastRecentlyUsedEntry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := workflow.NewLocalCache(workflow.LocalCacheOptions{Size: 2})
	require.NoError(t, c.Set(ctx, "a", 1, 0))
	require.NoError(t, c.Set(ctx, "b", 2, 0))
	_, ok, _ := c.Get(ctx, "a") // a is now more recent than b
	require.True(t, ok)
	require.NoError(t, c.Set(ctx, "c", 3, 0))
	_, ok, _ = c.Get(ctx, "b")
	assert.False(t, ok)
	v, ok, _ := c.Get(ctx, "a")
	assert.True(t, ok)
	assert.Equal(t, 1, v)
	assert.Equal(t, 2, c.Len())
}

// brokenCache fails every call.
type brokenCache struct{}

func (brokenCache) Get(context.Context, string) (any, bool, error) {
	return nil, false, errors.New("cache down")
}

func (brokenCache) Set(context.Context, string, any, time.Duration) error {
	return errors.New("cache down")
}

func TestACacheThatFailsDoesNotFailTheNode(t *testing.T) {
	t.Parallel()
	node := &lookupOrder{}
	wf := build(t, workflow.New("broken").
		Add("order", node, workflow.WithCache(brokenCache{}, workflow.KeyFromInputs("order", "id"), time.Minute)).
		BindParam("order", "id", "id"))
	run, err := execute(t, newRuntime(t, workflow.RuntimeOptions{}), wf, map[string]any{"id": 1})
	require.NoError(t, err)
	assert.Equal(t, workflow.OutcomeOK, nodeTrace(t, run, "order").Outcome)
}

func TestCacheGetAndSetNodesBuildCacheAsideOutOfNodes(t *testing.T) {
	t.Parallel()
	client, prefix := newRedis(t)
	cache := workflow.NewRedisCache(client, prefix)
	key := workflow.KeyFromInputs("price", "sku")
	node := &lookupOrder{}
	hit := workflow.Switch(func(_ context.Context, in workflow.Inputs) (string, error) {
		if in.Value("entry").(workflow.CacheEntry).Hit {
			return "hit", nil
		}
		return "miss", nil
	}, "hit", "miss")
	wf := build(t, workflow.New("explicit").
		Add("get", workflow.CacheGet(cache, key)).
		Add("hit?", hit).
		Add("load", node).
		Add("set", workflow.CacheSet(cache, key, time.Minute)).
		Add("answer", workflow.Merge(workflow.MergeFirst)).
		BindParam("get", "sku", "sku").
		Connect("get", "", "hit?", "entry").
		BindParam("hit?", "sku", "sku").
		Connect("hit?", "miss.sku", "load", "id").
		Connect("load", "", "set", "value").
		Connect("hit?", "miss.sku", "set", "sku").
		Connect("hit?", "hit.entry.value", "answer", "cached").
		Connect("set", "", "answer", "loaded"))
	rt := newRuntime(t, workflow.RuntimeOptions{})

	run, err := execute(t, rt, wf, map[string]any{"sku": 5})
	require.NoError(t, err)
	assert.Equal(t, "miss", nodeTrace(t, run, "hit?").Branch)
	v, _ := run.Result("answer")
	assert.Equal(t, map[string]any{"id": 5, "total": 12.5}, v, "loaded")

	run, err = execute(t, rt, wf, map[string]any{"sku": 5})
	require.NoError(t, err)
	assert.Equal(t, "hit", nodeTrace(t, run, "hit?").Branch)
	assert.Equal(t, workflow.OutcomeSkipped, nodeTrace(t, run, "load").Outcome)
	v, _ = run.Result("answer")
	assert.Equal(t, map[string]any{"id": 5.0, "total": 12.5}, v, "from Redis")
	assert.Equal(t, int32(1), node.calls.Load())
}
