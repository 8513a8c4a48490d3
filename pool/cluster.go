package pool

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
)

type poolKey struct {
	addr, database, user string
}

// Cluster owns the pools of every backend: one per (backend, database,
// user), created on first use. It is safe for concurrent use.
type Cluster struct {
	log     *zap.Logger
	monitor *monitor

	routedPrimary  atomic.Int64
	routedReplica  atomic.Int64
	staleAvoided   atomic.Int64
	replayed       atomic.Int64
	retried        atomic.Int64
	fallbacks      atomic.Int64
	routeNanos     atomic.Int64
	routeDecisions atomic.Int64

	mu          sync.Mutex
	cfg         *config.Config    // guarded by mu
	primaryAddr string            // guarded by mu; cfg.Primary.Addr()
	pools       map[poolKey]*Pool // guarded by mu
	closed      bool              // guarded by mu
	budgets     map[string]int    // guarded by mu; each backend's max_connections less its superuser reserve

	sizeStop, sizeDone chan struct{}
}

// NewCluster returns a cluster for cfg's primary and replicas. cfg must have
// passed validation and must not be modified afterwards; Reconfigure swaps it.
//
// With replicas configured, NewCluster measures them once before returning
// and then every routing.check_period until Close.
func NewCluster(cfg *config.Config, log *zap.Logger) *Cluster {
	c := &Cluster{log: log, cfg: cfg, primaryAddr: cfg.Primary.Addr(), pools: map[poolKey]*Pool{}, budgets: map[string]int{},
		sizeStop: make(chan struct{}), sizeDone: make(chan struct{})}
	c.monitor = newMonitor(cfg, log, c.closeIdleOn)
	go c.sizeLoop()
	return c
}

// closeIdleOn closes the idle connections to the backend at addr, which was
// just ejected: they would fail the next transaction that took them.
func (c *Cluster) closeIdleOn(addr string) {
	c.mu.Lock()
	var pools []*Pool
	for k, p := range c.pools {
		if k.addr == addr {
			pools = append(pools, p)
		}
	}
	c.mu.Unlock()
	for _, p := range pools {
		p.CloseIdle()
	}
}

// Target is where one transaction runs: a pool, and for a replica the
// bookkeeping Done updates.
type Target struct {
	Pool *Pool
	// MinLSN, when not zero, asks the caller to check on the connection
	// (ReplayedOn) that the replica has replayed this position: the
	// monitor's last reading was older.
	MinLSN  LSN
	replica *replica
	start   time.Time
}

// ReplayedOn checks, on a connection of a replica target with MinLSN set,
// that the replica has replayed MinLSN. When it has not, the caller must
// release the connection, call Done and route to the primary instead; the
// read counts as a stale read avoided.
func (c *Cluster) ReplayedOn(ctx context.Context, t Target, conn *Conn) bool {
	if t.MinLSN == 0 || t.replica == nil {
		return true
	}
	c.mu.Lock()
	deadline := time.Now().Add(c.cfg.Routing.ReadYourWritesWait)
	c.mu.Unlock()
	for {
		sets, err := conn.Query(ctx, "SELECT pg_catalog.pg_last_wal_replay_lsn()::text")
		if err != nil || len(sets) != 1 || len(sets[0]) != 1 {
			break
		}
		lsn, err := ParseLSN(sets[0][0][0])
		if err != nil {
			break
		}
		c.monitor.mu.Lock()
		if lsn > t.replica.replayLSN {
			t.replica.replayLSN = lsn
		}
		c.monitor.mu.Unlock()
		if lsn >= t.MinLSN {
			return true
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.staleAvoided.Add(1)
	return false
}

// Replica reports whether the target is a replica.
func (t Target) Replica() bool { return t.replica != nil }

// Done records the end of the transaction on the target: its duration
// feeds replica selection, and a connection-level failure (failed true)
// ejects the replica until its next successful health check.
func (t Target) Done(c *Cluster, failed error) {
	if t.replica == nil {
		return
	}
	t.replica.inFlight.Add(-1)
	d := int64(time.Since(t.start))
	old := t.replica.latency.Load()
	t.replica.latency.Store(old + (d-old)/8)
	if failed != nil {
		c.monitor.fail(t.replica.backend.Addr(), failed)
	}
}

// Route picks where a transaction of database and user runs: the primary,
// unless readOnly and a healthy replica has replayed minLSN (the client's
// last commit), chosen by the power of two choices on in-flight
// transactions and latency. When no replica qualifies it falls back to the
// primary.
func (c *Cluster) Route(database, user string, readOnly bool, minLSN LSN) (Target, error) {
	start := time.Now()
	defer func() {
		c.routeNanos.Add(int64(time.Since(start)))
		c.routeDecisions.Add(1)
	}()
	c.mu.Lock()
	replicaReads := c.cfg.Routing.ReplicaReads
	c.mu.Unlock()
	if readOnly && replicaReads && len(c.monitor.replicas) > 0 {
		r, stale := c.monitor.pick(minLSN)
		verify := LSN(0)
		if r == nil && stale {
			// The monitor's reading may just be old: let the caller ask.
			r, _ = c.monitor.pick(0)
			verify = minLSN
		}
		if r != nil {
			p, err := c.pool(r.addr, r.backend, database, user)
			if err != nil {
				return Target{}, err
			}
			r.inFlight.Add(1)
			c.routedReplica.Add(1)
			return Target{Pool: p, replica: r, start: start, MinLSN: verify}, nil
		}
		c.fallbacks.Add(1)
	}
	p, err := c.Primary(database, user)
	if err != nil {
		return Target{}, err
	}
	c.routedPrimary.Add(1)
	return Target{Pool: p}, nil
}

func (c *Cluster) pool(addr string, b config.Backend, database, user string) (*Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	return c.poolLocked(addr, b, database, user)
}

// UserFunctions is what the primary's user-defined functions mean to
// kproxy: which calls must run on the primary, and which may change the
// session.
type UserFunctions struct {
	// Volatile lists the functions and procedures that are neither
	// IMMUTABLE nor STABLE, by name and schema-qualified name, lower-cased:
	// calls to them must run on the primary, and may change the session.
	Volatile []string
	// Settings lists the custom (dotted) settings that function bodies set
	// by name, with set_config or SET, lower-cased. pg_settings does not
	// list custom settings, so these are the names read back after a
	// transaction that ran code. At most 1000 are listed.
	Settings []string
}

// userFunctionsSQL lists the volatile user functions; functionSettingsSQL
// the custom setting names their bodies mention.
const (
	userFunctionsSQL = `SELECT lower(p.proname), lower(n.nspname || '.' || p.proname)
 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE p.provolatile = 'v' AND p.prokind IN ('f', 'p')
 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'`
	functionSettingsSQL = `SELECT DISTINCT lower(m[1]) FROM pg_catalog.pg_proc p
 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace,
 LATERAL pg_catalog.regexp_matches(p.prosrc,
  '(?:set_config\s*\(\s*''|\m(?:set|reset)\s+(?:session\s+)?)([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)', 'gi') m
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
 LIMIT 1000`
)

// UserFunctions reads the primary's user-defined functions (see
// UserFunctions).
func (c *Cluster) UserFunctions(ctx context.Context) (UserFunctions, error) {
	c.mu.Lock()
	cfg := c.cfg
	c.mu.Unlock()
	var uf UserFunctions
	pc, err := monitorConfig(cfg.Routing, cfg.BackendTLS, cfg.Primary, "kproxy_catalog")
	if err != nil {
		return uf, err
	}
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return uf, err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, userFunctionsSQL, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return uf, res.Err
	}
	uf.Volatile = make([]string, 0, 2*len(res.Rows))
	for _, r := range res.Rows {
		uf.Volatile = append(uf.Volatile, string(r[0]), string(r[1]))
	}
	res = conn.ExecParams(ctx, functionSettingsSQL, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return uf, res.Err
	}
	for _, r := range res.Rows {
		uf.Settings = append(uf.Settings, string(r[0]))
	}
	return uf, nil
}

// RoutingStats is a snapshot of routing decisions and replica states.
type RoutingStats struct {
	RoutedPrimary int64 `json:"transactions_to_primary"`
	RoutedReplica int64 `json:"transactions_to_replicas"`
	// StaleReadsAvoided counts reads sent to the primary because no replica
	// had replayed the client's last write yet; Fallbacks those sent there
	// because no replica was healthy.
	StaleReadsAvoided int64 `json:"stale_reads_avoided"`
	Fallbacks         int64 `json:"replica_fallbacks"`
	// ReplayedOnPrimary counts transactions a replica refused with 25006
	// before anything reached the client, run again on the primary.
	ReplayedOnPrimary int64 `json:"replayed_on_primary"`
	// ReadsRetried counts reads whose replica connection failed before
	// anything reached the client, run again on the primary.
	ReadsRetried  int64          `json:"reads_retried_on_primary"`
	AvgRouteNanos int64          `json:"avg_route_ns"`
	PrimaryLSN    string         `json:"primary_lsn"`
	Replicas      []ReplicaStats `json:"replicas"`
}

// NoteReplayed counts a transaction run again on the primary after a
// replica refused it, or after its replica connection failed.
func (c *Cluster) NoteReplayed(failed bool) {
	if failed {
		c.retried.Add(1)
	} else {
		c.replayed.Add(1)
	}
}

// RoutingStats returns a snapshot of routing decisions and replica states.
func (c *Cluster) RoutingStats() RoutingStats {
	s := RoutingStats{
		RoutedPrimary: c.routedPrimary.Load(), RoutedReplica: c.routedReplica.Load(),
		StaleReadsAvoided: c.staleAvoided.Load(), Fallbacks: c.fallbacks.Load(),
		ReplayedOnPrimary: c.replayed.Load(), ReadsRetried: c.retried.Load(), Replicas: c.monitor.stats(),
	}
	if n := c.routeDecisions.Load(); n > 0 {
		s.AvgRouteNanos = c.routeNanos.Load() / n
	}
	c.monitor.mu.Lock()
	s.PrimaryLSN = c.monitor.primaryLSN.String()
	c.monitor.mu.Unlock()
	return s
}

// Primary returns the pool for database and user (as the client named them)
// on the primary.
func (c *Cluster) Primary(database, user string) (*Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	return c.poolLocked(c.primaryAddr, c.cfg.Primary, database, user)
}

// poolLocked returns the pool of database and user on backend b, whose
// address is addr.
func (c *Cluster) poolLocked(addr string, b config.Backend, database, user string) (*Pool, error) {
	k := poolKey{addr: addr, database: database, user: user}
	if p := c.pools[k]; p != nil {
		return p, nil
	}
	p, err := New(c.poolConfig(b, database, user), c.log)
	if err != nil {
		return nil, err
	}
	c.pools[k] = p
	if p.workload.Load() != nil && c.cfg.Learning.RedisAddr != "" {
		go c.restoreWorkload(p, k, c.cfg.Learning.RedisAddr, c.cfg.Learning.RedisKey)
	}
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
	c.monitor.reconfigure(cfg)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = cfg
	c.primaryAddr = cfg.Primary.Addr()
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
	wasClosed := c.closed
	c.mu.Unlock()
	if !wasClosed {
		c.saveWorkloads() // what the pools learned outlives the restart
	}
	c.mu.Lock()
	pools := c.pools
	c.pools = map[poolKey]*Pool{}
	wasClosed = c.closed
	c.closed = true
	c.mu.Unlock()
	if !wasClosed {
		close(c.sizeStop)
	}
	<-c.sizeDone
	c.monitor.close()
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
