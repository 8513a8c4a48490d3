package pool

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// workloadPatterns bounds the statement shapes a pool's workload learns.
const workloadPatterns = 1000

// forecastHorizon is how far ahead the sizer looks in the learned
// workload: a peak predicted within it is pre-warmed.
const forecastHorizon = 15 * time.Minute

// forecastHeadroom is the spare capacity on top of the forecast busy
// connections.
const forecastHeadroom = 0.2

// SizingStats is the adaptive sizer's last reading and decision.
type SizingStats struct {
	At                time.Time `json:"at"`
	Capacity          int       `json:"capacity"`
	Busy              float64   `json:"busy_connections"`
	AcquiresPerSecond float64   `json:"acquires_per_second"`
	Waiting           int       `json:"waiting"`
	// AcquireP99Ms is the p99 wait for a connection over the last interval.
	AcquireP99Ms float64  `json:"p99_acquisition_time_ms"`
	Forecast     int      `json:"forecast_size"`
	Budget       int      `json:"budget"`
	Reasons      []string `json:"reasons"`
}

// sizing is what the cluster's sizer loop keeps per pool between ticks.
// Only that goroutine uses it.
type sizing struct {
	sizer  *Sizer
	last   time.Time
	waits  latencySnap
	holds  latencySnap
	busy   int64
	demand int                  // the size the sizer last wanted, for budget shares
	alerts map[string]time.Time // when each raised alert was last logged
}

// sample measures the pool over the interval since the previous sample.
func (p *Pool) sample(st *sizing, now time.Time) SizerSample {
	waits, holds, busy := p.waits.snapshot(), p.holds.snapshot(), p.busyNanos.Load()
	dw, dh := waits.minus(st.waits), holds.minus(st.holds)
	interval := now.Sub(st.last)
	st.waits, st.holds, st.last = waits, holds, now
	busyDelta := busy - st.busy
	st.busy = busy

	p.mu.Lock()
	size, open, idle, waiting := p.capacity, p.open, len(p.idle), len(p.waiters)
	p.mu.Unlock()
	s := SizerSample{
		Now: now, Interval: interval, Size: size, Waiting: waiting,
		Arrivals: dw.count, ServiceTime: dh.mean(), AcquireP99: dw.quantile(0.99),
	}
	if interval > 0 {
		s.Busy = float64(busyDelta) / float64(interval)
	}
	// Transactions still running count as busy too.
	s.Busy = math.Max(s.Busy, float64(open-idle))
	if w := p.workload.Load(); w != nil {
		s.Forecast = w.Forecast(now, forecastHorizon, forecastHeadroom).RecommendedPoolSize
	}
	return s
}

// sizeLoop runs the adaptive sizers of every pool with adaptive_sizing, and
// raises alerts, every sizing_interval of the top-level pool settings.
func (c *Cluster) sizeLoop() {
	defer close(c.sizeDone)
	c.mu.Lock()
	interval := c.cfg.Pool.SizingInterval
	c.mu.Unlock()
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	lastSave := time.Now()
	for {
		select {
		case <-c.sizeStop:
			return
		case now := <-t.C:
			c.sizeOnce(now)
			c.mu.Lock()
			every := c.cfg.Learning.SaveInterval
			c.mu.Unlock()
			if every > 0 && now.Sub(lastSave) >= every {
				lastSave = now
				c.saveWorkloads()
			}
		}
	}
}

// sizeOnce runs one round of sizing: per backend, the budget is shared
// among its adaptive pools by their last demand, then each pool's sizer
// decides within its share.
func (c *Cluster) sizeOnce(now time.Time) {
	c.mu.Lock()
	byBackend := map[string][]poolKey{}
	for k := range c.pools {
		byBackend[k.addr] = append(byBackend[k.addr], k)
	}
	pools := make(map[poolKey]*Pool, len(c.pools))
	for k, p := range c.pools {
		pools[k] = p
	}
	reserved := c.cfg.BackendReservedConnections
	c.mu.Unlock()

	for addr, keys := range byBackend {
		sort.Slice(keys, func(i, j int) bool { return keys[i].database+keys[i].user < keys[j].database+keys[j].user })
		budget := c.budget(addr, reserved)
		shares := c.shares(keys, pools, budget)
		for _, k := range keys {
			p := pools[k]
			c.sizePool(p, now, shares[k])
			c.alert(p)
		}
	}
}

// shares splits budget among the adaptive pools in keys. Pools without
// adaptive sizing take what they hold now off the budget. If every
// adaptive pool's demand fits, each gets its demand plus an equal part of
// what is left; otherwise each gets its minimum plus a part of the rest in
// proportion to its demand above that minimum. A budget of 0 means
// unknown: no limit.
func (c *Cluster) shares(keys []poolKey, pools map[poolKey]*Pool, budget int) map[poolKey]int {
	shares := map[poolKey]int{}
	if budget <= 0 {
		return shares
	}
	type want struct {
		k           poolKey
		min, demand int
	}
	var adaptive []want
	left := budget
	for _, k := range keys {
		p := pools[k]
		l := p.Limits()
		if !l.AdaptiveSizing {
			left -= p.Stats().Open
			continue
		}
		w := want{k: k, min: max(l.MinConnections, 1)}
		w.demand = w.min
		if st := p.sizing; st != nil {
			w.demand = max(st.demand, w.min)
		}
		adaptive = append(adaptive, w)
	}
	if len(adaptive) == 0 {
		return shares
	}
	sumMin, sumDemand := 0, 0
	for _, w := range adaptive {
		sumMin += w.min
		sumDemand += w.demand
	}
	for _, w := range adaptive {
		switch {
		case sumDemand <= left:
			shares[w.k] = w.demand + (left-sumDemand)/len(adaptive)
		case left > sumMin && sumDemand > sumMin:
			shares[w.k] = w.min + (left-sumMin)*(w.demand-w.min)/(sumDemand-sumMin)
		default:
			shares[w.k] = w.min
		}
	}
	return shares
}

func (c *Cluster) sizePool(p *Pool, now time.Time, budget int) {
	l := p.Limits()
	if !l.AdaptiveSizing {
		return
	}
	if p.sizing == nil {
		p.sizing = &sizing{
			sizer: NewSizer(SizerConfig{
				Min: max(l.MinConnections, 1), Max: l.MaxConnections,
				TargetUtilization: float64(l.TargetUtilizationPercent) / 100,
				ShrinkCooldown:    l.ShrinkCooldown,
				GrowCooldown:      l.SizingInterval,
			}),
			last:  now,
			waits: p.waits.snapshot(), holds: p.holds.snapshot(), busy: p.busyNanos.Load(),
		}
		return
	}
	s := p.sample(p.sizing, now)
	s.Budget = budget
	d := p.sizing.sizer.Next(s)
	p.sizing.demand = d.Size
	rate := 0.0
	if s.Interval > 0 {
		rate = float64(s.Arrivals) / s.Interval.Seconds()
	}
	p.lastSizing.Store(&SizingStats{
		At: now, Capacity: d.Size, Busy: s.Busy, AcquiresPerSecond: rate, Waiting: s.Waiting,
		AcquireP99Ms: float64(s.AcquireP99) / float64(time.Millisecond), Forecast: s.Forecast, Budget: budget,
		Reasons: d.Reasons,
	})
	if s.Forecast > 0 && s.Forecast > d.Size {
		p.sizing.demand = s.Forecast
	}
	if !d.Changed {
		return
	}
	p.SetCapacity(d.Size)
	if s.Forecast > 0 && d.Size >= s.Forecast {
		// A peak is predicted: open the connections before it comes.
		go p.fill(s.Forecast)
	}
	p.log.Info("pool resized", zap.Int("from", s.Size), zap.Int("to", d.Size), zap.Bool("emergency", d.Emergency),
		zap.Strings("reasons", d.Reasons), zap.Int("budget", budget))
}

// alertLogEvery is how often an alert that stays raised, or keeps
// coming back, is logged again.
const alertLogEvery = time.Minute

// alert logs each alert of p when it is raised, and again at most every
// alertLogEvery while it stays raised or comes back.
func (c *Cluster) alert(p *Pool) {
	if p.sizing == nil {
		p.sizing = &sizing{last: time.Now()}
	}
	if p.sizing.alerts == nil {
		p.sizing.alerts = map[string]time.Time{}
	}
	now := time.Now()
	for _, a := range p.Stats().Alerts {
		if last, ok := p.sizing.alerts[a.Name]; ok && now.Sub(last) < alertLogEvery {
			continue
		}
		p.sizing.alerts[a.Name] = now
		p.log.Warn("pool alert", zap.String("alert", a.Name), zap.String("detail", a.Detail),
			zap.String("recommendation", a.Recommendation))
	}
}

// budget returns how many connections kproxy may hold on the backend at
// addr: its max_connections less superuser_reserved_connections less
// reserved. It is read from the server once and remembered; 0 when it
// cannot be read.
func (c *Cluster) budget(addr string, reserved int) int {
	c.mu.Lock()
	b, ok := c.budgets[addr]
	c.mu.Unlock()
	if ok {
		return max(b-reserved, 1)
	}
	n, err := c.readBudget(addr)
	if err != nil {
		c.log.Warn("could not read the backend's max_connections; sizing without a budget", zap.String("backend", addr), zap.Error(err))
		return 0
	}
	c.mu.Lock()
	c.budgets[addr] = n
	c.mu.Unlock()
	return max(n-reserved, 1)
}

// Budget returns the connection budget of the backend at addr, 0 when
// unknown.
func (c *Cluster) Budget(addr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.budgets[addr]
	if !ok {
		return 0
	}
	return max(b-c.cfg.BackendReservedConnections, 1)
}

func (c *Cluster) readBudget(addr string) (int, error) {
	c.mu.Lock()
	cfg := c.cfg
	c.mu.Unlock()
	b := cfg.Primary
	for _, r := range cfg.Replicas {
		if r.Addr() == addr {
			b = r
		}
	}
	if b.Addr() != addr {
		return 0, fmt.Errorf("backend %s is no longer configured", addr)
	}
	pc, err := monitorConfig(cfg.Routing, cfg.BackendTLS, b, "kproxy_budget")
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, `SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int`,
		nil, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return 0, fmt.Errorf("unexpected answer to the max_connections query")
	}
	var n int
	if _, err := fmt.Sscan(string(res.Rows[0][0]), &n); err != nil {
		return 0, err
	}
	return n, nil
}

// workloadKey is where a pool's learned workload is kept in Redis.
func (c *Cluster) workloadKey(prefix string, k poolKey) string {
	return prefix + ":" + k.addr + "/" + k.database + "/" + k.user
}

// restoreWorkload loads what p learned before a restart, if Redis keeps
// it.
func (c *Cluster) restoreWorkload(p *Pool, k poolKey, addr, prefix string) {
	w := p.workload.Load()
	if w == nil || addr == "" {
		return
	}
	store := NewWorkloadStore(addr, c.workloadKey(prefix, k))
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	snap, ok, err := store.Load(ctx)
	switch {
	case err != nil:
		c.log.Warn("could not load the learned workload from Redis", zap.String("redis", addr), zap.Error(err))
	case ok:
		w.Restore(snap)
		c.log.Info("learned workload restored from Redis", zap.String("backend", k.addr),
			zap.String("database", k.database), zap.String("user", k.user))
	}
}

// saveWorkloads saves every learning pool's workload to Redis.
func (c *Cluster) saveWorkloads() {
	c.mu.Lock()
	addr, prefix := c.cfg.Learning.RedisAddr, c.cfg.Learning.RedisKey
	pools := make(map[poolKey]*Pool, len(c.pools))
	for k, p := range c.pools {
		pools[k] = p
	}
	c.mu.Unlock()
	if addr == "" {
		return
	}
	for k, p := range pools {
		w := p.workload.Load()
		if w == nil {
			continue
		}
		store := NewWorkloadStore(addr, c.workloadKey(prefix, k))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := store.Save(ctx, w.Snapshot())
		cancel()
		store.Close()
		if err != nil {
			c.log.Warn("could not save the learned workload to Redis", zap.String("redis", addr), zap.Error(err))
		}
	}
}
