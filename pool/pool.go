package pool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgwire"
)

// ErrAcquireTimeout is returned by Acquire when no server connection became
// available within the pool's acquire timeout.
var ErrAcquireTimeout = errors.New("timed out waiting for a server connection")

// ErrClosed is returned by Acquire on a closed pool.
var ErrClosed = errors.New("pool is closed")

// ConnectError is returned by Acquire when a new server connection could not
// be opened. Err is a *pgconn.PgError when the server refused the connection
// (unknown database, bad password…), a network error otherwise.
type ConnectError struct {
	Addr string
	Err  error
}

func (e *ConnectError) Error() string { return fmt.Sprintf("connect to %s: %v", e.Addr, e.Err) }
func (e *ConnectError) Unwrap() error { return e.Err }

// Config says where a pool connects and how it is sized.
type Config struct {
	// Network is "tcp" or "unix"; Addr is host:port or a socket path.
	Network string
	Addr    string
	// Host and Port are the parts of Addr, for pgconn.
	Host string
	Port uint16
	// Database and User are what the server connections log in as.
	Database string
	User     string
	// Password is used when the server asks for one.
	Password string
	// SSLMode and RootCertFile are libpq's sslmode and sslrootcert.
	SSLMode      string
	RootCertFile string
	// Limits holds sizes and timeouts.
	Limits config.Pool
}

// Pool holds the server connections of one (backend, database, user). It is
// safe for concurrent use.
type Pool struct {
	cfg  Config
	log  *zap.Logger
	pgc  *pgconn.Config
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	limits config.Pool // guarded by mu
	// capacity is how many connections may be open now: MaxConnections,
	// or what the adaptive sizer chose between MinConnections and it.
	capacity int       // guarded by mu
	idle     []*Conn   // guarded by mu; most recently used last
	open     int       // guarded by mu; connections open or being opened
	waiters  []*waiter // guarded by mu; first come first served
	closed   bool      // guarded by mu

	created      atomic.Int64
	closedConns  atomic.Int64
	failed       atomic.Int64
	acquires     atomic.Int64
	timeouts     atomic.Int64
	waitNanos    atomic.Int64
	maxWaitNanos atomic.Int64

	recycled    atomic.Int64
	releases    atomic.Int64
	busyNanos   atomic.Int64 // connection-time held by clients
	queries     atomic.Int64
	queryErrors atomic.Int64
	waits       latencyHist // acquire waits
	holds       latencyHist // how long each acquisition held its connection
	// workload learns the pool's statement patterns (pattern_learning);
	// nil when off.
	workload atomic.Pointer[Workload]
	// sizing is the adaptive sizer's state; only the cluster's sizer
	// goroutine uses it.
	sizing *sizing
	// params are the ParameterStatus values the pool's first connection
	// reported, for logins that need no connection of their own.
	params     atomic.Pointer[map[string]string]
	lastSizing atomic.Pointer[SizingStats]

	preparedHits      atomic.Int64
	preparedMisses    atomic.Int64
	preparedEvictions atomic.Int64
	all               sync.Map // *Conn → struct{}: every open connection, for stats
	// garbage counts the clients' statements and lists those none holds
	// any more (stmt.go).
	garbage stmtGarbage
	// known maps the keys of statements some connection prepared without
	// error to the schema generation they were prepared in (KnownStmt).
	known *lru.Cache[string, KnownShape]
	// validSettings holds the SettingsKeys some connection applied with
	// Sync without error.
	validSettings *lru.Cache[string, struct{}]
}

// validSettingsKeys bounds Pool.validSettings.
const validSettingsKeys = 1000

// ValidSettings reports whether settings with SettingsKey key were applied
// without error on a connection of the pool.
func (p *Pool) ValidSettings(key string) bool {
	_, ok := p.validSettings.Get(key)
	return key == "" || ok
}

func (p *Pool) maxPrepared() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.limits.MaxPreparedStatements, 1)
}

type waiter struct {
	ch chan *Conn // buffered 1; nil value means "capacity freed, try again"
}

// New creates a pool and starts its maintenance goroutine, which pre-warms,
// keeps min_connections open, closes idle and expired connections and checks
// idle ones for liveness. Close stops it.
func New(cfg Config, log *zap.Logger) (*Pool, error) {
	if cfg.Network == "" {
		cfg.Network = "tcp"
	}
	dsn := fmt.Sprintf("host='%s' port=%d dbname='%s' user='%s' sslmode=%s",
		escapeDSN(cfg.Host), cfg.Port, escapeDSN(cfg.Database), escapeDSN(cfg.User), cfg.SSLMode)
	if cfg.RootCertFile != "" {
		dsn += fmt.Sprintf(" sslrootcert='%s'", escapeDSN(cfg.RootCertFile))
	}
	pgc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pool for %s: %w", cfg.Addr, err)
	}
	pgc.Password = cfg.Password
	dial := pgc.DialFunc
	pgc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &dialedConn{Conn: nc}, nil
	}
	if pgc.RuntimeParams == nil {
		pgc.RuntimeParams = map[string]string{}
	}
	known, err := lru.New[string, KnownShape](knownStmts)
	if err != nil {
		return nil, err
	}
	valid, err := lru.New[string, struct{}](validSettingsKeys)
	if err != nil {
		return nil, err
	}
	p := &Pool{
		known:         known,
		validSettings: valid,
		cfg:           cfg,
		log:           log.With(zap.String("backend", cfg.Addr), zap.String("database", cfg.Database), zap.String("user", cfg.User)),
		pgc:           pgc,
		limits:        cfg.Limits,
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	p.capacity = cfg.Limits.MaxConnections
	if cfg.Limits.AdaptiveSizing {
		// The sizer grows it from here as load arrives.
		p.capacity = max(cfg.Limits.MinConnections, cfg.Limits.PrewarmConnections, 1)
	}
	if cfg.Limits.PatternLearning {
		p.workload.Store(NewWorkload(workloadPatterns))
	}
	go p.maintain()
	return p, nil
}

func escapeDSN(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// Limits returns the pool's current sizes and timeouts.
func (p *Pool) Limits() config.Pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.limits
}

// SetLimits changes sizes and timeouts at run time. Lowering MaxConnections
// closes idle connections above it; busy ones close when released.
func (p *Pool) SetLimits(l config.Pool) {
	p.mu.Lock()
	p.limits = l
	if l.PatternLearning && p.workload.Load() == nil {
		p.workload.Store(NewWorkload(workloadPatterns))
	}
	capacity := l.MaxConnections
	if l.AdaptiveSizing {
		capacity = p.capacity
	}
	p.setCapacityLocked(capacity)
}

// ServerParams returns the ParameterStatus values a connection of the pool
// reported when it opened (server_version, encodings, DateStyle…), nil
// before the first connection. The map must not be modified.
func (p *Pool) ServerParams() map[string]string {
	if m := p.params.Load(); m != nil {
		return *m
	}
	return nil
}

// SetCapacity changes how many connections the pool may open, within
// [MinConnections, MaxConnections]. Shrinking closes idle connections
// first; a busy one closes when it is released.
func (p *Pool) SetCapacity(n int) {
	p.mu.Lock()
	p.setCapacityLocked(n)
}

// Capacity returns how many connections the pool may open now.
func (p *Pool) Capacity() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.capacity
}

// setCapacityLocked applies capacity n and unlocks mu.
func (p *Pool) setCapacityLocked(n int) {
	l := p.limits
	p.capacity = min(max(n, l.MinConnections, 1), max(l.MaxConnections, 1))
	var drop []*Conn
	for p.open > p.capacity && len(p.idle) > 0 {
		c := p.idle[0]
		p.idle = p.idle[1:]
		p.open--
		drop = append(drop, c)
	}
	// Raising the limit lets waiters open connections.
	for p.open < p.capacity && len(p.waiters) > 0 {
		p.wakeLocked(nil)
	}
	p.mu.Unlock()
	for _, c := range drop {
		p.closeConn(c)
	}
}

// CloseIdle closes every idle connection, for a backend known to be down.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	for len(p.waiters) > 0 && p.open < p.capacity {
		p.wakeLocked(nil)
	}
	p.mu.Unlock()
	for _, c := range idle {
		p.closeConn(c)
	}
}

// Acquire returns a server connection for the caller's exclusive use, opening
// one if the pool is below its maximum, or waiting up to the acquire timeout.
// Cancelling ctx abandons the wait. The caller must hand the connection back
// with Release once it is idle (ReadyForQuery 'I' with nothing pending).
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	return p.AcquirePreferring(ctx, "")
}

// AcquirePreferring is Acquire, preferring among idle connections the most
// recently used one whose settings have SettingsKey settingsKey, so that
// they need not be changed.
func (p *Pool) AcquirePreferring(ctx context.Context, settingsKey string) (*Conn, error) {
	start := time.Now()
	p.acquires.Add(1)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		now := time.Now()
		for len(p.idle) > 0 {
			i := len(p.idle) - 1
			for j := i; j >= 0; j-- {
				if p.idle[j].settingsKey == settingsKey {
					i = j
					break
				}
			}
			c := p.idle[i]
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			if c.broken || now.After(c.expiresAt) {
				p.open--
				p.mu.Unlock()
				p.closeConn(c)
				p.mu.Lock()
				continue
			}
			p.mu.Unlock()
			p.noteAcquired(c, start, now, now)
			return c, nil
		}
		if p.open < p.capacity {
			p.open++
			p.mu.Unlock()
			began := time.Now()
			c, err := p.connect(ctx)
			if err != nil {
				p.mu.Lock()
				p.open--
				if len(p.waiters) > 0 {
					p.wakeLocked(nil)
				}
				p.mu.Unlock()
				return nil, err
			}
			p.noteAcquired(c, start, began, time.Now())
			return c, nil
		}
		w := &waiter{ch: make(chan *Conn, 1)}
		p.waiters = append(p.waiters, w)
		timeout := p.limits.AcquireTimeout
		p.mu.Unlock()

		if timer == nil {
			timer = time.NewTimer(timeout - time.Since(start))
		}
		select {
		case c := <-w.ch:
			if c != nil {
				now := time.Now()
				p.noteAcquired(c, start, now, now)
				return c, nil
			}
			continue // capacity freed: try again
		case <-timer.C:
			p.timeouts.Add(1)
			p.abandon(w)
			return nil, ErrAcquireTimeout
		case <-ctx.Done():
			p.abandon(w)
			return nil, ctx.Err()
		}
	}
}

// abandon removes w from the queue, or, when a connection was already handed
// to it, gives that connection back.
func (p *Pool) abandon(w *waiter) {
	p.mu.Lock()
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			return
		}
	}
	p.mu.Unlock()
	if c := <-w.ch; c != nil {
		p.Release(c)
	} else {
		p.mu.Lock()
		if len(p.waiters) > 0 {
			p.wakeLocked(nil)
		}
		p.mu.Unlock()
	}
}

// wakeLocked hands c (or a retry signal when c is nil) to the first waiter.
func (p *Pool) wakeLocked(c *Conn) {
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	w.ch <- c
}

// noteAcquired records an acquisition that began at start, waited for a
// connection until waitEnd (opening a new one is not waiting) and handed
// c over at now.
func (p *Pool) noteAcquired(c *Conn, start, waitEnd, now time.Time) {
	c.acquiredAt = now
	p.waits.add(waitEnd.Sub(start))
	d := int64(waitEnd.Sub(start))
	p.waitNanos.Add(d)
	for {
		m := p.maxWaitNanos.Load()
		if d <= m || p.maxWaitNanos.CompareAndSwap(m, d) {
			return
		}
	}
}

// slowCheck is how long a liveness check may take and still pass.
const slowCheck = time.Second

// Release hands c back. A broken or expired connection, or one above the
// pool's current maximum, is closed instead.
func (p *Pool) Release(c *Conn) {
	now := time.Now()
	if !c.acquiredAt.IsZero() {
		held := now.Sub(c.acquiredAt)
		p.busyNanos.Add(int64(held))
		p.releases.Add(1)
		p.holds.add(held)
		if w := p.workload.Load(); w != nil {
			w.Record(c.fingerprint, c.example, c.acquiredAt, held)
		}
		c.acquiredAt = time.Time{}
		c.fingerprint, c.example = 0, ""
	}
	c.dropPending()
	p.mu.Lock()
	recycle := !c.broken && c.Health() < p.limits.HealthThreshold
	if c.broken || p.closed || now.After(c.expiresAt) || p.open > p.capacity || recycle {
		if recycle {
			p.recycled.Add(1)
			p.log.Info("recycling an unhealthy server connection", zap.Uint32("pid", c.pid), zap.Int("health", c.Health()))
		}
		p.open--
		if len(p.waiters) > 0 && !p.closed {
			p.wakeLocked(nil)
		}
		p.mu.Unlock()
		p.closeConn(c)
		return
	}
	if len(p.waiters) > 0 {
		p.wakeLocked(c)
		p.mu.Unlock()
		return
	}
	c.idleSince = now
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

func (p *Pool) connect(ctx context.Context) (*Conn, error) {
	limits := p.Limits()
	ctx, cancel := context.WithTimeout(ctx, limits.ConnectTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, p.pgc)
	if err != nil {
		p.failed.Add(1)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, &ConnectError{Addr: p.cfg.Addr, Err: pgErr}
		}
		return nil, &ConnectError{Addr: p.cfg.Addr, Err: rootCause(err)}
	}
	hj, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		p.failed.Add(1)
		return nil, &ConnectError{Addr: p.cfg.Addr, Err: err}
	}
	nc, err := takeOver(hj.Conn)
	if err != nil {
		_ = hj.Conn.Close()
		p.failed.Add(1)
		return nil, &ConnectError{Addr: p.cfg.Addr, Err: err}
	}
	now := time.Now()
	life := limits.MaxLifetime
	if j := limits.MaxLifetimeJitter; j > 0 {
		life += rand.N(j)
	}
	prepared, err := simplelru.NewLRU[string, *stmtEntry](math.MaxInt32, nil)
	if err != nil {
		return nil, err
	}
	params := make(map[string]string, len(hj.ParameterStatuses))
	for k, v := range hj.ParameterStatuses {
		params[k] = v
	}
	c := &Conn{
		pool:      p,
		nc:        nc,
		rd:        pgwire.NewReader(nc, serverReadBufBytes, maxServerMsgBytes),
		wr:        pgwire.NewWriter(nc, serverWriteBufBytes, false),
		pid:       hj.PID,
		secret:    hj.SecretKey,
		params:    params,
		settings:  map[string]string{},
		prepared:  prepared,
		createdAt: now,
		expiresAt: now.Add(life),
	}
	c.health.Store(fullHealth)
	if p.params.Load() == nil {
		cp := make(map[string]string, len(params))
		for k, v := range params {
			cp[k] = v
		}
		p.params.Store(&cp)
	}
	p.created.Add(1)
	p.all.Store(c, struct{}{})
	return c, nil
}

// rootCause digs out the innermost error, which names what went wrong
// ("connection refused") without the layers of context above it.
func rootCause(err error) error {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err
	}
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

func (p *Pool) closeConn(c *Conn) {
	p.closedConns.Add(1)
	p.all.Delete(c)
	c.close()
}

// Close closes idle connections, stops maintenance and makes Acquire fail.
// Connections held by callers are closed when released. Close is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	for _, w := range p.waiters {
		w.ch <- nil
	}
	p.waiters = nil
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	for _, c := range idle {
		p.closeConn(c)
	}
}

// maintain runs until Close.
func (p *Pool) maintain() {
	defer close(p.done)
	if n := p.Limits().PrewarmConnections; n > 0 {
		p.fill(n)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
			p.sweep()
		}
	}
}

// fill opens connections until n are open.
func (p *Pool) fill(n int) {
	for {
		p.mu.Lock()
		if p.closed || p.open >= n || p.open >= p.limits.MaxConnections {
			p.mu.Unlock()
			return
		}
		p.open++
		p.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-p.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		c, err := p.connect(ctx)
		cancel()
		if err != nil {
			p.mu.Lock()
			p.open--
			p.mu.Unlock()
			p.log.Warn("could not open server connection", zap.Error(err))
			return
		}
		p.Release(c)
	}
}

// sweep closes idle connections past their lifetime or idle timeout (keeping
// min_connections), checks idle connections unused for a health-check
// period, and tops the pool up to min_connections.
func (p *Pool) sweep() {
	now := time.Now()
	p.mu.Lock()
	l := p.limits
	var drop, check []*Conn
	keep := p.idle[:0]
	for _, c := range p.idle {
		idleFor := now.Sub(c.idleSince)
		switch {
		case c.broken || now.After(c.expiresAt) || c.Health() < closeHealth:
			drop = append(drop, c)
		case l.IdleTimeout > 0 && idleFor > l.IdleTimeout && p.open-len(drop) > l.MinConnections:
			drop = append(drop, c)
		case l.HealthCheckPeriod > 0 && idleFor > l.HealthCheckPeriod:
			check = append(check, c)
		default:
			keep = append(keep, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.open -= len(drop)
	min := l.MinConnections
	p.mu.Unlock()

	for _, c := range drop {
		p.closeConn(c)
	}
	for _, c := range check {
		ctx, cancel := context.WithTimeout(context.Background(), l.ConnectTimeout)
		began := time.Now()
		err := c.Ping(ctx)
		cancel()
		took := time.Since(began)
		switch {
		case err != nil:
			c.noteCheck(false)
			c.broken = true
			p.log.Info("idle server connection failed its health check", zap.Uint32("pid", c.pid), zap.Error(err))
		case took > slowCheck:
			// Alive but slow to answer: a failed check all the same.
			c.noteCheck(false)
			p.log.Info("idle server connection was slow to answer its health check",
				zap.Uint32("pid", c.pid), zap.Duration("took", took), zap.Int("health", c.Health()))
		default:
			c.noteCheck(true)
		}
		p.Release(c) // refreshes idleSince, or closes a broken one
	}
	if min > 0 {
		p.fill(min)
	}
}

// Stats is a snapshot of a pool's state and counters.
type Stats struct {
	Backend  string `json:"backend"`
	Database string `json:"database"`
	User     string `json:"user"`
	// Open counts connections open or being opened; Idle those in the pool.
	Open    int `json:"open"`
	Idle    int `json:"idle"`
	Active  int `json:"active"`
	Waiting int `json:"waiting"`
	Max     int `json:"max_connections"`
	Min     int `json:"min_connections"`

	Created         int64         `json:"connections_created"`
	Closed          int64         `json:"connections_closed"`
	Failed          int64         `json:"connections_failed"`
	Acquires        int64         `json:"acquires"`
	AcquireTimeouts int64         `json:"acquire_timeouts"`
	AvgAcquireWait  time.Duration `json:"avg_acquire_wait_ns"`
	MaxAcquireWait  time.Duration `json:"max_acquire_wait_ns"`

	// Prepared statements in transaction mode: a hit finds the statement
	// already prepared on the server connection, a miss prepares it.
	PreparedHits      int64 `json:"prepared_hits"`
	PreparedMisses    int64 `json:"prepared_misses"`
	PreparedEvictions int64 `json:"prepared_evictions"`

	Servers []ServerStats `json:"servers"`

	// Capacity is how many connections the pool may open now (the adaptive
	// sizer moves it between min and max); Budget the connections kproxy
	// may hold on the backend, 0 when unknown.
	Capacity int `json:"capacity"`

	// The same, grouped the way Kailash's pool stats are.
	Connections  ConnectionCounts `json:"connections"`
	Queries      QueryCounts      `json:"queries"`
	Performance  Performance      `json:"performance"`
	Health       PoolHealth       `json:"health"`
	CurrentState CurrentState     `json:"current_state"`
	Alerts       []Alert          `json:"alerts"`
	// Workload holds what pattern_learning learned; nil when off.
	Workload *WorkloadStats `json:"workload,omitempty"`
	// Sizing is the adaptive sizer's last decision; nil when off.
	Sizing *SizingStats `json:"sizing,omitempty"`
}

// ConnectionCounts counts server connections over the pool's life.
type ConnectionCounts struct {
	Created  int64 `json:"created"`
	Recycled int64 `json:"recycled"`
	Failed   int64 `json:"failed"`
}

// QueryCounts counts statements answered through the pool's connections.
type QueryCounts struct {
	Executed  int64   `json:"executed"`
	Errors    int64   `json:"errors"`
	ErrorRate float64 `json:"error_rate"`
}

// Performance holds acquisition and query (connection hold) times.
type Performance struct {
	AvgAcquisitionMs float64 `json:"avg_acquisition_time_ms"`
	P99AcquisitionMs float64 `json:"p99_acquisition_time_ms"`
	AvgQueryMs       float64 `json:"avg_query_time_ms"`
	P99QueryMs       float64 `json:"p99_query_time_ms"`
	Utilization      float64 `json:"utilization"`
	QueriesPerConn   float64 `json:"queries_per_connection"`
}

// PoolHealth sums up the health scores of the open connections.
type PoolHealth struct {
	Score     float64 `json:"score"`
	Unhealthy int     `json:"unhealthy_connections"`
}

// CurrentState is the pool right now.
type CurrentState struct {
	Total        int   `json:"total"`
	Active       int   `json:"active"`
	Available    int   `json:"available"`
	HealthScores []int `json:"health_scores"`
}

// Alert is a threshold the pool crossed, with what to do about it.
type Alert struct {
	Name           string `json:"name"`
	Detail         string `json:"detail"`
	Recommendation string `json:"recommendation"`
}

// WorkloadStats is what pattern learning knows about the pool's load.
type WorkloadStats struct {
	FrequentPatterns []Pattern    `json:"frequent_patterns"`
	PeakHours        []HourOfWeek `json:"peak_hours"`
	Forecast         Forecast     `json:"forecast"`
}

// ServerStats describes one open server connection.
type ServerStats struct {
	PID       uint32    `json:"pid"`
	Prepared  int64     `json:"prepared_statements"`
	CreatedAt time.Time `json:"created_at"`
	Health    int       `json:"health"`
	Active    bool      `json:"active"`
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{
		Backend: p.cfg.Addr, Database: p.cfg.Database, User: p.cfg.User,
		Open: p.open, Idle: len(p.idle), Active: p.open - len(p.idle), Waiting: len(p.waiters),
		Max: p.limits.MaxConnections, Min: p.limits.MinConnections, Capacity: p.capacity,
	}
	idle := make(map[*Conn]bool, len(p.idle))
	for _, c := range p.idle {
		idle[c] = true
	}
	threshold := p.limits.HealthThreshold
	p.mu.Unlock()
	s.Created = p.created.Load()
	s.Closed = p.closedConns.Load()
	s.Failed = p.failed.Load()
	s.Acquires = p.acquires.Load()
	s.AcquireTimeouts = p.timeouts.Load()
	if s.Acquires > 0 {
		s.AvgAcquireWait = time.Duration(p.waitNanos.Load() / s.Acquires)
	}
	s.MaxAcquireWait = time.Duration(p.maxWaitNanos.Load())
	s.PreparedHits = p.preparedHits.Load()
	s.PreparedMisses = p.preparedMisses.Load()
	s.PreparedEvictions = p.preparedEvictions.Load()
	p.all.Range(func(k, _ any) bool {
		c := k.(*Conn)
		s.Servers = append(s.Servers, ServerStats{PID: c.pid, Prepared: c.preparedCount.Load(), CreatedAt: c.createdAt,
			Health: c.Health(), Active: !idle[c]})
		return true
	})
	sort.Slice(s.Servers, func(i, j int) bool { return s.Servers[i].PID < s.Servers[j].PID })
	p.summarise(&s, threshold)
	return s
}

// summarise fills the grouped stats and the alerts from the counters.
func (p *Pool) summarise(s *Stats, threshold int) {
	s.Connections = ConnectionCounts{Created: s.Created, Recycled: p.recycled.Load(), Failed: s.Failed}
	q := QueryCounts{Executed: p.queries.Load(), Errors: p.queryErrors.Load()}
	if q.Executed > 0 {
		q.ErrorRate = float64(q.Errors) / float64(q.Executed)
	}
	s.Queries = q
	waits, holds := p.waits.snapshot(), p.holds.snapshot()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	s.Performance = Performance{
		AvgAcquisitionMs: ms(waits.mean()), P99AcquisitionMs: ms(waits.quantile(0.99)),
		AvgQueryMs: ms(holds.mean()), P99QueryMs: ms(holds.quantile(0.99)),
	}
	if s.Capacity > 0 {
		s.Performance.Utilization = float64(s.Active) / float64(s.Capacity)
	}
	if s.Created > 0 {
		s.Performance.QueriesPerConn = float64(q.Executed) / float64(s.Created)
	}
	s.Health = PoolHealth{Score: fullHealth}
	scores := make([]int, 0, len(s.Servers))
	sum := 0
	for _, sv := range s.Servers {
		scores = append(scores, sv.Health)
		sum += sv.Health
		if sv.Health < threshold {
			s.Health.Unhealthy++
		}
	}
	if len(scores) > 0 {
		s.Health.Score = float64(sum) / float64(len(scores))
	}
	s.CurrentState = CurrentState{Total: s.Open, Active: s.Active, Available: s.Idle, HealthScores: scores}
	s.Alerts = alerts(s)
	s.Sizing = p.lastSizing.Load()
	if w := p.workload.Load(); w != nil {
		s.Workload = &WorkloadStats{
			FrequentPatterns: w.FrequentPatterns(10),
			PeakHours:        w.PeakHours(5),
			Forecast:         w.Forecast(time.Now(), forecastHorizon, forecastHeadroom),
		}
	}
}

// Alert thresholds.
const (
	alertUtilization    = 0.9
	alertErrorRate      = 0.05
	alertUnhealthy      = 2
	alertP99Acquisition = 100 // milliseconds
	alertLowReuse       = 10  // queries per connection
	alertMinQueries     = 100 // before low reuse means anything
)

// alerts returns the thresholds s crosses.
func alerts(s *Stats) []Alert {
	var out []Alert
	if s.Performance.Utilization > alertUtilization {
		out = append(out, Alert{"high_utilization",
			fmt.Sprintf("%.0f%% of the pool's %d connections are busy", 100*s.Performance.Utilization, s.Capacity),
			"raise max_connections or turn on adaptive_sizing"})
	}
	if s.Queries.ErrorRate > alertErrorRate {
		out = append(out, Alert{"high_error_rate",
			fmt.Sprintf("%.1f%% of statements failed", 100*s.Queries.ErrorRate),
			"look at the errors clients receive; the server log names them"})
	}
	if s.Health.Unhealthy > alertUnhealthy {
		out = append(out, Alert{"unhealthy_connections",
			fmt.Sprintf("%d connections score below the health threshold", s.Health.Unhealthy),
			"check the network and the server's load; unhealthy connections are recycled"})
	}
	if s.Performance.P99AcquisitionMs > alertP99Acquisition {
		out = append(out, Alert{"slow_acquisition",
			fmt.Sprintf("p99 wait for a connection is %.0f ms", s.Performance.P99AcquisitionMs),
			"raise max_connections or turn on adaptive_sizing; look for long transactions"})
	}
	if s.Queries.Executed >= alertMinQueries && s.Performance.QueriesPerConn < alertLowReuse {
		out = append(out, Alert{"low_reuse",
			fmt.Sprintf("%.1f statements per connection opened", s.Performance.QueriesPerConn),
			"connections are opened and closed too often: raise min_connections, idle_timeout or max_lifetime"})
	}
	return out
}
