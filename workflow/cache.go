package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"
)

// Cache stores node outputs by key. Implementations must be safe for
// concurrent use; a Cache is created outside workflows and shared by them.
type Cache interface {
	// Get returns the value stored under key and whether there was one.
	Get(ctx context.Context, key string) (value any, ok bool, err error)
	// Set stores value under key for ttl; ttl 0 keeps it until evicted.
	Set(ctx context.Context, key string, value any, ttl time.Duration) error
}

// KeyFunc derives a cache key from a node's inputs.
type KeyFunc func(in Inputs) (string, error)

// KeyFromInputs returns a KeyFunc that joins prefix and the JSON encoding of
// the named inputs: KeyFromInputs("order", "id") gives `order:[42]`. A
// missing input is an error.
func KeyFromInputs(prefix string, names ...string) KeyFunc {
	return func(in Inputs) (string, error) {
		vals := make([]any, len(names))
		for i, n := range names {
			v, ok := in.Get(n)
			if !ok {
				return "", fmt.Errorf("cache key: %w %q", ErrMissingInput, n)
			}
			vals[i] = v
		}
		b, err := json.Marshal(vals)
		if err != nil {
			return "", fmt.Errorf("cache key: %w", err)
		}
		var k strings.Builder
		k.Grow(len(prefix) + 1 + len(b))
		k.WriteString(prefix)
		k.WriteByte(':')
		k.Write(b)
		return k.String(), nil
	}
}

// LocalCacheOptions configures a LocalCache.
type LocalCacheOptions struct {
	// Size is the number of entries kept; the least recently used goes
	// first. Default 1024.
	Size int
	// Clock tells entries' expiry; default the system clock.
	Clock Clock
}

// LocalCache is an in-process LRU cache whose entries expire after their
// own TTL. Values are stored as they are, not copied: they are shared with
// every reader and must not be modified. It is safe for concurrent use and
// starts no goroutines; an expired entry is dropped when it is next read or
// when it falls off the LRU end.
type LocalCache struct {
	entries *lru.Cache[string, localEntry]
	clock   Clock
}

type localEntry struct {
	value   any
	expires time.Time // zero: never
}

// NewLocalCache returns an empty LocalCache.
func NewLocalCache(o LocalCacheOptions) *LocalCache {
	if o.Size <= 0 {
		o.Size = 1024
	}
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	entries, err := lru.New[string, localEntry](o.Size)
	if err != nil {
		panic(err) // only for a size < 1, excluded above
	}
	return &LocalCache{entries: entries, clock: o.Clock}
}

// Get returns the live value under key. It never fails.
func (c *LocalCache) Get(_ context.Context, key string) (any, bool, error) {
	e, ok := c.entries.Peek(key)
	if !ok {
		return nil, false, nil
	}
	if !e.expires.IsZero() && !c.clock.Now().Before(e.expires) {
		// A value stored again since the Peek may go too; that is a miss,
		// not a wrong answer.
		c.entries.Remove(key)
		return nil, false, nil
	}
	c.entries.Get(key) // mark it recently used
	return e.value, true, nil
}

// Set stores value under key for ttl. It never fails.
func (c *LocalCache) Set(_ context.Context, key string, value any, ttl time.Duration) error {
	e := localEntry{value: value}
	if ttl > 0 {
		e.expires = c.clock.Now().Add(ttl)
	}
	c.entries.Add(key, e)
	return nil
}

// Len returns the number of entries, expired ones not yet dropped included.
func (c *LocalCache) Len() int { return c.entries.Len() }

// RedisCache keeps values in Redis, JSON-encoded, so that kproxy instances
// share them. A value comes back as JSON decodes into an any: objects as
// map[string]any, arrays as []any, numbers as float64 (Input converts them
// back to integers). The client belongs to the caller, who closes it after
// the last run; RedisCache is safe for concurrent use.
type RedisCache struct {
	client redis.UniversalClient
	prefix string
}

// NewRedisCache returns a cache on client whose keys all start with prefix.
func NewRedisCache(client redis.UniversalClient, prefix string) *RedisCache {
	return &RedisCache{client: client, prefix: prefix}
}

// Get reads and decodes the value under key.
func (c *RedisCache) Get(ctx context.Context, key string) (any, bool, error) {
	b, err := c.client.Get(ctx, c.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("redis cache get: %w", err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, false, fmt.Errorf("redis cache get %s: %w", key, err)
	}
	return v, true, nil
}

// Set encodes value as JSON and stores it under key for ttl.
func (c *RedisCache) Set(ctx context.Context, key string, value any, ttl time.Duration) error {
	b, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("redis cache set %s: %w", key, err)
	}
	if err := c.client.Set(ctx, c.prefix+key, b, ttl).Err(); err != nil {
		return fmt.Errorf("redis cache set: %w", err)
	}
	return nil
}

// CacheEntry is the output of a CacheGet node.
type CacheEntry struct {
	Hit   bool `json:"hit"`
	Value any  `json:"value"` // nil on a miss
}

// Lookup resolves "hit" and "value".
func (e CacheEntry) Lookup(key string) (any, bool) {
	switch key {
	case "hit":
		return e.Hit, true
	case "value":
		return e.Value, true
	}
	return nil, false
}

// CacheGet returns a node that reads key(in) from c; its output is a
// CacheEntry, which a Switch can route on ("hit"). A cache error fails it.
func CacheGet(c Cache, key KeyFunc) Node { return &cacheGetNode{c: c, key: key} }

type cacheGetNode struct {
	c   Cache
	key KeyFunc
}

func (n *cacheGetNode) Kind() string { return "cache_get" }

func (n *cacheGetNode) Validate() error {
	if n.c == nil || n.key == nil {
		return errors.New("CacheGet: nil cache or key function")
	}
	return nil
}

func (n *cacheGetNode) Run(ctx context.Context, in Inputs) (any, error) {
	k, err := n.key(in)
	if err != nil {
		return nil, err
	}
	v, ok, err := n.c.Get(ctx, k)
	if err != nil {
		return nil, err
	}
	return CacheEntry{Hit: ok, Value: v}, nil
}

// CacheSet returns a node that stores its input "value" in c under key(in)
// for ttl, and outputs the value. A cache error fails it.
func CacheSet(c Cache, key KeyFunc, ttl time.Duration) Node {
	return &cacheSetNode{c: c, key: key, ttl: ttl}
}

type cacheSetNode struct {
	c   Cache
	key KeyFunc
	ttl time.Duration
}

func (n *cacheSetNode) Kind() string { return "cache_set" }

func (n *cacheSetNode) Validate() error {
	if n.c == nil || n.key == nil {
		return errors.New("CacheSet: nil cache or key function")
	}
	if n.ttl < 0 {
		return fmt.Errorf("CacheSet: negative TTL %v", n.ttl)
	}
	return nil
}

func (n *cacheSetNode) Run(ctx context.Context, in Inputs) (any, error) {
	v, ok := in.Get("value")
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrMissingInput, "value")
	}
	k, err := n.key(in)
	if err != nil {
		return nil, err
	}
	if err := n.c.Set(ctx, k, v, n.ttl); err != nil {
		return nil, err
	}
	return v, nil
}
