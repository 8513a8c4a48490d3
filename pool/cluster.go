package pool

import (
	"sort"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
)

type poolKey struct {
	addr, database, user string
}

// Cluster owns the pools of every backend: one per (backend, database,
// user), created on first use. It is safe for concurrent use.
type Cluster struct {
	log *zap.Logger

	mu     sync.Mutex
	cfg    *config.Config    // guarded by mu
	pools  map[poolKey]*Pool // guarded by mu
	closed bool              // guarded by mu
}

// NewCluster returns a cluster for cfg's primary and replicas. cfg must have
// passed validation and must not be modified afterwards; Reconfigure swaps it.
func NewCluster(cfg *config.Config, log *zap.Logger) *Cluster {
	return &Cluster{log: log, cfg: cfg, pools: map[poolKey]*Pool{}}
}

// Primary returns the pool for database and user (as the client named them)
// on the primary.
func (c *Cluster) Primary(database, user string) (*Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	return c.poolLocked(c.cfg.Primary, database, user)
}

func (c *Cluster) poolLocked(b config.Backend, database, user string) (*Pool, error) {
	k := poolKey{addr: b.Addr(), database: database, user: user}
	if p := c.pools[k]; p != nil {
		return p, nil
	}
	p, err := New(c.poolConfig(b, database, user), c.log)
	if err != nil {
		return nil, err
	}
	c.pools[k] = p
	return p, nil
}

func (c *Cluster) poolConfig(b config.Backend, database, user string) Config {
	u := c.cfg.Users[user]
	pw := u.BackendPassword
	if pw == "" {
		pw = u.Password
	}
	network, addr := "tcp", b.Addr()
	if strings.HasPrefix(b.Host, "/") {
		network = "unix"
		addr = b.Host + "/.s.PGSQL." + strconv.Itoa(int(b.Port))
	}
	return Config{
		Network:      network,
		Addr:         addr,
		Host:         b.Host,
		Port:         b.Port,
		Database:     c.cfg.BackendDatabase(database),
		User:         user,
		Password:     pw,
		SSLMode:      c.cfg.BackendTLS.SSLMode,
		RootCertFile: c.cfg.BackendTLS.RootCertFile,
		Limits:       c.cfg.PoolFor(database, user),
	}
}

// Reconfigure applies a new configuration: pools take their new limits at
// once. Pools of a backend that left the configuration are closed.
func (c *Cluster) Reconfigure(cfg *config.Config) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = cfg
	backends := map[string]config.Backend{cfg.Primary.Addr(): cfg.Primary}
	for _, r := range cfg.Replicas {
		backends[r.Addr()] = r
	}
	for k, p := range c.pools {
		if _, ok := backends[k.addr]; !ok {
			delete(c.pools, k)
			go p.Close()
			continue
		}
		p.SetLimits(cfg.PoolFor(k.database, k.user))
	}
}

// Stats returns a snapshot of every pool, ordered by backend, database, user.
func (c *Cluster) Stats() []Stats {
	c.mu.Lock()
	pools := make([]*Pool, 0, len(c.pools))
	for _, p := range c.pools {
		pools = append(pools, p)
	}
	c.mu.Unlock()
	out := make([]Stats, 0, len(pools))
	for _, p := range pools {
		out = append(out, p.Stats())
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		if a.Database != b.Database {
			return a.Database < b.Database
		}
		return a.User < b.User
	})
	return out
}

// Close closes every pool. It is idempotent.
func (c *Cluster) Close() {
	c.mu.Lock()
	pools := c.pools
	c.pools = map[poolKey]*Pool{}
	c.closed = true
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Close()
		}()
	}
	wg.Wait()
}
