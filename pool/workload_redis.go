package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// workloadTTL is how long a saved snapshot outlives its last save.
const workloadTTL = 30 * 24 * time.Hour

// WorkloadStore saves and loads workload snapshots in Redis under a key. It
// is safe for concurrent use. Against an unreachable or silent server, Save
// and Load fail within a few seconds (2 s per attempt, at most two
// attempts), or sooner when their context ends.
type WorkloadStore struct {
	rdb       *redis.Client
	key       string
	closeOnce sync.Once
	closeErr  error
}

// NewWorkloadStore returns a store for the key in the Redis server at addr
// (host:port). It connects lazily: a bad address shows in Save and Load.
// Close releases its connections.
func NewWorkloadStore(addr, key string) *WorkloadStore {
	return &WorkloadStore{
		key: key,
		rdb: redis.NewClient(&redis.Options{
			Addr: addr,
			// One dial attempt and one retry of the command, each bounded,
			// so that an unreachable server costs seconds, not minutes.
			DialTimeout:           2 * time.Second,
			DialerRetries:         1,
			ReadTimeout:           2 * time.Second,
			WriteTimeout:          2 * time.Second,
			MaxRetries:            1,
			ContextTimeoutEnabled: true,
			// Plain Redis: no cluster maintenance notifications to ask for.
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		}),
	}
}

// Save writes snap as JSON under the store's key, to expire 30 days after
// the last save. Cancelling ctx abandons the write.
func (s *WorkloadStore) Save(ctx context.Context, snap WorkloadSnapshot) error {
	b, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("save workload to redis key %q: %w", s.key, err)
	}
	if err := s.rdb.Set(ctx, s.key, b, workloadTTL).Err(); err != nil {
		return fmt.Errorf("save workload to redis key %q: %w", s.key, err)
	}
	return nil
}

// Load reads the snapshot under the store's key. It returns false, and no
// error, when the key is absent. Cancelling ctx abandons the read.
func (s *WorkloadStore) Load(ctx context.Context) (WorkloadSnapshot, bool, error) {
	b, err := s.rdb.Get(ctx, s.key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return WorkloadSnapshot{}, false, nil
	case err != nil:
		return WorkloadSnapshot{}, false, fmt.Errorf("load workload from redis key %q: %w", s.key, err)
	}
	var snap WorkloadSnapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return WorkloadSnapshot{}, false, fmt.Errorf("load workload from redis key %q: %w", s.key, err)
	}
	return snap, true, nil
}

// Close closes the store's connections. It is idempotent; Save and Load
// fail after it.
func (s *WorkloadStore) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.rdb.Close() })
	return s.closeErr
}
