package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
)

// LSN is a PostgreSQL WAL position.
type LSN uint64

// ParseLSN parses the text form "X/Y" of a pg_lsn.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("malformed LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("malformed LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("malformed LSN %q", s)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xffffffff) }

// replica is the monitored state of one replica. Its fields are guarded by
// the monitor's mutex; inFlight is atomic.
type replica struct {
	backend   config.Backend
	addr      string // backend.Addr(), kept: routing needs it per transaction
	healthy   bool
	replayLSN LSN
	lagBytes  int64
	lagSecs   float64
	lastErr   string
	ejections int64
	// health scores the replica as a backend, 0 to 100, like a
	// connection's: -20 per failure that ejects it, +5 per good check. It is readmitted only at replicaAdmitHealth or
	// above, so a replica whose connections keep failing stays out longer
	// each time.
	health    int
	checkedAt time.Time
	inFlight  atomic.Int64
	latency   atomic.Int64 // EWMA of transaction time on it, in ns
}

// ReplicaStats is a snapshot of one replica's state.
type ReplicaStats struct {
	Addr       string    `json:"addr"`
	Healthy    bool      `json:"healthy"`
	ReplayLSN  string    `json:"replay_lsn"`
	LagBytes   int64     `json:"lag_bytes"`
	LagSeconds float64   `json:"lag_seconds"`
	InFlight   int64     `json:"in_flight"`
	Ejections  int64     `json:"ejections"`
	Health     int       `json:"health"`
	LastError  string    `json:"last_error,omitempty"`
	CheckedAt  time.Time `json:"checked_at"`
}

// monitor measures the primary's WAL position and each replica's health,
// replay position and lag every check period, and ejects and readmits
// replicas. It is safe for concurrent use.
type monitor struct {
	log  *zap.Logger
	stop chan struct{}
	done chan struct{}

	mu         sync.Mutex
	cfg        config.Routing // guarded by mu
	tls        config.BackendTLS
	primary    config.Backend // guarded by mu
	primaryLSN LSN            // guarded by mu
	replicas   []*replica     // guarded by mu; fixed after start
	conns      map[string]*pgconn.PgConn
	// onEject is called, without mu held, with the address of a replica
	// just ejected.
	onEject func(addr string)
}

func newMonitor(cfg *config.Config, log *zap.Logger, onEject func(addr string)) *monitor {
	m := &monitor{
		onEject: onEject,
		log:     log,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		cfg:     cfg.Routing,
		tls:     cfg.BackendTLS,
		primary: cfg.Primary,
		conns:   map[string]*pgconn.PgConn{},
	}
	for _, b := range cfg.Replicas {
		m.replicas = append(m.replicas, &replica{backend: b, addr: b.Addr(), health: fullHealth})
	}
	if len(m.replicas) == 0 {
		close(m.done)
		return m
	}
	m.checkAll()
	go m.run()
	return m
}

func (m *monitor) close() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	for _, c := range m.conns {
		c.Close(context.Background())
	}
}

func (m *monitor) run() {
	defer close(m.done)
	for {
		m.mu.Lock()
		period := m.cfg.CheckPeriod
		m.mu.Unlock()
		select {
		case <-m.stop:
			return
		case <-time.After(period):
			m.checkAll()
		}
	}
}

// query runs sql on the monitoring connection to b, opening it if needed,
// and returns the first row.
func (m *monitor) query(ctx context.Context, b config.Backend, sql string) ([]string, error) {
	addr := b.Addr()
	c := m.conns[addr]
	if c == nil {
		m.mu.Lock()
		r := m.cfg
		m.mu.Unlock()
		pc, err := monitorConfig(r, m.tls, b, "kproxy_monitor")
		if err != nil {
			return nil, err
		}
		c, err = pgconn.ConnectConfig(ctx, pc)
		if err != nil {
			return nil, rootCause(err)
		}
		m.conns[addr] = c
	}
	res := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		c.Close(context.Background())
		delete(m.conns, addr)
		return nil, res.Err
	}
	if len(res.Rows) != 1 {
		return nil, fmt.Errorf("monitor query returned %d rows", len(res.Rows))
	}
	row := make([]string, len(res.Rows[0]))
	for i, v := range res.Rows[0] {
		row[i] = string(v)
	}
	return row, nil
}

// monitorConfig is how kproxy's own connections (health checks, catalog
// reads) log in to backend b.
func monitorConfig(r config.Routing, tls config.BackendTLS, b config.Backend, appName string) (*pgconn.Config, error) {
	dsn := fmt.Sprintf("host='%s' port=%d dbname='%s' user='%s' sslmode=%s application_name=%s",
		escapeDSN(b.Host), b.Port, escapeDSN(r.MonitorDatabase), escapeDSN(r.MonitorUser), tls.SSLMode, appName)
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pc.Password = r.MonitorPassword
	return pc, nil
}

// checkAll takes one measurement of the primary and every replica. Only the
// monitor goroutine (and newMonitor before it starts) calls it.
func (m *monitor) checkAll() {
	m.mu.Lock()
	period := m.cfg.CheckPeriod
	primary := m.primary
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), max(period, time.Second))
	defer cancel()
	var primaryLSN LSN
	if row, err := m.query(ctx, primary, "SELECT pg_catalog.pg_current_wal_lsn()::text"); err == nil {
		primaryLSN, _ = ParseLSN(row[0])
	}
	for _, r := range m.replicas {
		row, err := m.query(ctx, r.backend, `SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text,
 coalesce(extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()), 0)::float8`)
		m.mu.Lock()
		ejected := m.updateLocked(r, row, err, primaryLSN)
		m.mu.Unlock()
		if ejected {
			m.onEject(r.backend.Addr())
		}
	}
	m.mu.Lock()
	if primaryLSN > m.primaryLSN {
		m.primaryLSN = primaryLSN
	}
	m.mu.Unlock()
}

func (m *monitor) updateLocked(r *replica, row []string, err error, primaryLSN LSN) (ejected bool) {
	r.checkedAt = time.Now()
	was := r.healthy
	reason := ""
	switch {
	case err != nil:
		reason = err.Error()
	case row[0] != "t":
		reason = "not in recovery: it is not a replica (promoted?)"
	default:
		lsn, perr := ParseLSN(row[1])
		if perr != nil {
			reason = perr.Error()
			break
		}
		r.replayLSN = lsn
		r.lagBytes = 0
		if primaryLSN > lsn {
			r.lagBytes = int64(primaryLSN - lsn)
		}
		r.lagSecs = 0
		if r.lagBytes > 0 {
			r.lagSecs, _ = strconv.ParseFloat(row[2], 64)
		}
		if m.cfg.MaxReplicaLagBytes > 0 && r.lagBytes > m.cfg.MaxReplicaLagBytes {
			reason = fmt.Sprintf("lags %d bytes behind the primary (max_replica_lag_bytes %d)", r.lagBytes, m.cfg.MaxReplicaLagBytes)
		} else if m.cfg.MaxReplicaLag > 0 && r.lagSecs > m.cfg.MaxReplicaLag.Seconds() {
			reason = fmt.Sprintf("lags %.1fs behind the primary (max_replica_lag %s)", r.lagSecs, m.cfg.MaxReplicaLag)
		}
	}
	if reason == "" {
		r.health = min(r.health+passedCheckGain, fullHealth)
		if r.health < replicaAdmitHealth {
			reason = fmt.Sprintf("recovering from failures: health %d, readmitted at %d", r.health, replicaAdmitHealth)
		}
	} else if was {
		// Only the failure that ejects it counts: a replica that is down
		// for long is not kept out longer once it is back.
		r.health = max(r.health-failedCheckCost, 0)
	}
	r.lastErr = reason
	r.healthy = reason == ""
	switch {
	case was && !r.healthy:
		r.ejections++
		m.log.Warn("replica ejected", zap.String("replica", r.backend.Addr()), zap.String("reason", reason))
		return true
	case !was && r.healthy:
		m.log.Info("replica admitted", zap.String("replica", r.backend.Addr()), zap.Int64("lag_bytes", r.lagBytes))
	}
	return false
}

// replicaAdmitHealth is the health a replica needs to receive reads.
const replicaAdmitHealth = 50

// fail ejects the replica at addr at once, after a failure seen on one of
// its connections; the next successful check readmits it.
func (m *monitor) fail(addr string, err error) {
	ejected := false
	m.mu.Lock()
	for _, r := range m.replicas {
		if r.backend.Addr() == addr && r.healthy {
			r.healthy = false
			r.health = max(r.health-failedCheckCost, 0)
			r.lastErr = err.Error()
			r.ejections++
			ejected = true
			m.log.Warn("replica ejected", zap.String("replica", addr), zap.Error(err))
		}
	}
	m.mu.Unlock()
	if ejected {
		m.onEject(addr)
	}
}

// pick chooses a healthy replica that has replayed minLSN, by the power of
// two choices on in-flight transactions and latency. It returns nil when
// none qualifies; stale reports whether some healthy replica was passed
// over only because it had not replayed minLSN yet.
func (m *monitor) pick(minLSN LSN) (r *replica, stale bool) {
	m.mu.Lock()
	var ok []*replica
	for _, x := range m.replicas {
		if !x.healthy {
			continue
		}
		if x.replayLSN < minLSN {
			stale = true
			continue
		}
		ok = append(ok, x)
	}
	m.mu.Unlock()
	switch len(ok) {
	case 0:
		return nil, stale
	case 1:
		return ok[0], false
	}
	a, b := ok[rand.IntN(len(ok))], ok[rand.IntN(len(ok))]
	if cost(b) < cost(a) {
		a = b
	}
	return a, false
}

func cost(r *replica) float64 {
	return float64(r.inFlight.Load()+1) * float64(max(r.latency.Load(), 1))
}

func (m *monitor) stats() []ReplicaStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]ReplicaStats, 0, len(m.replicas))
	for _, r := range m.replicas {
		out = append(out, ReplicaStats{
			Addr: r.backend.Addr(), Healthy: r.healthy, ReplayLSN: r.replayLSN.String(), LagBytes: r.lagBytes,
			LagSeconds: r.lagSecs, InFlight: r.inFlight.Load(), Ejections: r.ejections, Health: r.health,
			LastError: r.lastErr, CheckedAt: r.checkedAt,
		})
	}
	return out
}

func (m *monitor) reconfigure(cfg *config.Config) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg = cfg.Routing
}
