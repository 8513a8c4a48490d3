package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/kproxy/kproxy/classify"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/netpark"
	"github.com/kproxy/kproxy/pool"
)

// Server accepts client connections and runs a session for each. It is safe
// for concurrent use.
type Server struct {
	log     *zap.Logger
	cluster *pool.Cluster
	cfg     atomic.Pointer[config.Config]
	tls     atomic.Pointer[tls.Config] // nil: SSLRequest is declined
	auth    *authenticator
	stats   counters
	// classifier decides which statements may run on replicas; refresh
	// asks for the primary's volatile user functions to be loaded again,
	// for it and for userFuncs.
	classifier  *classify.Classifier
	refresh     chan struct{}
	stopRefresh chan struct{}
	refreshDone chan struct{}
	// userFuncs holds the volatile user functions by lower-cased name
	// (calls to them may change the session) and funcSettings the custom
	// settings their bodies set; funcsStale is set from a request to
	// load them until a load that began after it succeeds, and meanwhile
	// every transaction counts as running code.
	userFuncs    atomic.Pointer[map[string]bool]
	funcSettings atomic.Pointer[[]string]
	funcsStale   atomic.Bool
	// schemaGen is raised when a client's statement may change the schema
	// (DDL, code), as kproxy plans it and again when its transaction
	// ends: a Parse the pool knows parses is acknowledged without a
	// server only within the generation it parsed in (answerLocallyLocked).
	schemaGen  atomic.Uint64
	funcsAsked atomic.Uint64 // requests to load them

	// paused is set while PAUSE on the admin console holds back new
	// transactions of every database (pausedAll) or of some (pausedDBs);
	// they wait on pauseCond until RESUME. reloader is what RELOAD runs.
	paused    atomic.Bool
	pauseMu   sync.Mutex
	pauseCond *sync.Cond
	pausedAll bool            // guarded by pauseMu
	pausedDBs map[string]bool // guarded by pauseMu
	reloader  atomic.Pointer[func() error]

	mu        sync.Mutex
	listeners map[net.Listener]struct{} // guarded by mu
	sessions  map[*session]struct{}     // guarded by mu
	consoles  map[*session]struct{}     // guarded by mu; admin console clients
	byKey     map[cancelKey]*session    // guarded by mu
	draining  bool                      // guarded by mu
	idle      chan struct{}             // guarded by mu; closed when draining and no sessions are left
	wg        sync.WaitGroup

	// parker holds idle clients' sockets (see park.go); nil when epoll is
	// not available. The sweeper counts parkTick.
	parker    *netpark.Parker
	parkTick  atomic.Int64
	stopSweep chan struct{}
	sweepDone chan struct{}

	// workers run the server side of transactions (relayServer).
	workers workers
	// loops are the event loops of relay_engine "loop" (loop.go); nil
	// with the goroutine engine.
	loops *loopEngine
}

// classifierCacheSize bounds the statement shapes whose classification is
// cached.
const classifierCacheSize = 10000

type cancelKey struct {
	pid    uint32
	secret uint32
}

type counters struct {
	accepted     atomic.Int64
	loginsFailed atomic.Int64
	cancels      atomic.Int64
	parks        atomic.Int64
	pins         [classify.NumEffects]atomic.Int64 // pins started, by reason
	pinNanos     [classify.NumEffects]atomic.Int64 // time spent pinned (ended pins), by reason
	handOffs     atomic.Int64                      // sessions an event loop gave to a goroutine (loop.go)
	onLoops      atomic.Int64                      // sessions event loops own now
}

// New returns a server that sends clients' statements to cluster. cfg must
// have passed validation.
func New(cfg *config.Config, cluster *pool.Cluster, log *zap.Logger) (*Server, error) {
	s := &Server{
		log:        log,
		cluster:    cluster,
		auth:       newAuthenticator(),
		classifier: classify.New(classifierCacheSize, nil),
		listeners:  map[net.Listener]struct{}{},
		sessions:   map[*session]struct{}{},
		consoles:   map[*session]struct{}{},
		byKey:      map[cancelKey]*session{},
	}
	s.pauseCond = sync.NewCond(&s.pauseMu)
	if err := s.Reload(cfg); err != nil {
		return nil, err
	}
	if cfg.RelayEngine == "loop" {
		// The engine is chosen at start; a reload does not change it.
		e, err := newLoopEngine(cfg.EventLoops)
		if err != nil {
			return nil, err
		}
		s.loops = e
	}
	s.refresh = make(chan struct{}, 1)
	s.stopRefresh = make(chan struct{})
	s.refreshDone = make(chan struct{})
	s.funcsStale.Store(true)
	s.refresh <- struct{}{}
	go s.refreshFunctions()
	s.stopSweep = make(chan struct{})
	s.sweepDone = make(chan struct{})
	if p, err := netpark.New(); err != nil {
		log.Warn("idle clients keep their goroutines", zap.Error(err))
		close(s.sweepDone)
	} else {
		s.parker = p
		go s.sweepIdle(s.stopSweep, s.sweepDone)
	}
	return s, nil
}

// functionsEvery is how often the user functions are loaded again when
// nothing asked: functions created directly on the primary are known after
// this long at most.
const functionsEvery = 30 * time.Second

// refreshFunctions loads the user functions from the primary whenever
// asked (at start and after DDL of functions) and every functionsEvery,
// until Shutdown.
func (s *Server) refreshFunctions() {
	defer close(s.refreshDone)
	tick := time.NewTicker(functionsEvery)
	defer tick.Stop()
	for first := true; ; first = false {
		select {
		case <-s.stopRefresh:
			return
		case <-s.refresh:
			if first {
				break
			}
			// Let the DDL that asked commit first.
			select {
			case <-s.stopRefresh:
				return
			case <-time.After(100 * time.Millisecond):
			}
		case <-tick.C:
		}
		asked := s.funcsAsked.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		uf, err := s.cluster.UserFunctions(ctx)
		cancel()
		if err != nil {
			s.log.Warn("could not load user functions from the primary", zap.Error(err))
			continue
		}
		s.classifier.SetVolatileFunctions(uf.Volatile)
		m := make(map[string]bool, len(uf.Volatile))
		for _, n := range uf.Volatile {
			m[n] = true
		}
		s.userFuncs.Store(&m)
		s.funcSettings.Store(&uf.Settings)
		if s.funcsAsked.Load() == asked {
			s.funcsStale.Store(false)
		}
		s.log.Debug("user functions loaded", zap.Int("count", len(uf.Volatile)/2), zap.Int("settings", len(uf.Settings)))
	}
}

// requestRefresh asks for the user functions to be loaded again.
func (s *Server) requestRefresh() {
	s.funcsAsked.Add(1)
	s.funcsStale.Store(true)
	select {
	case s.refresh <- struct{}{}:
	default:
	}
}

// Reload applies a new configuration: users, authentication, TLS
// certificate and pool limits change at once for new logins and new
// transactions. Listen addresses do not change; they need a restart.
func (s *Server) Reload(cfg *config.Config) error {
	var tc *tls.Config
	if cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("load TLS certificate: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.tls.Store(tc)
	s.cfg.Store(cfg)
	s.classifier.SetReadOnlyFunctions(cfg.Routing.ReadOnlyFunctions)
	if old := s.cluster; old != nil {
		old.Reconfigure(cfg)
	}
	return nil
}

// Serve accepts connections on ln until ln is closed or Shutdown is called.
// It returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			delete(s.listeners, ln)
			s.mu.Unlock()
			if draining {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(delay*2, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.stats.accepted.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(nc)
		}()
	}
}

// Shutdown stops accepting, closes each client as soon as it is outside a
// transaction, and waits for all to leave. When ctx ends first, the remaining
// clients are disconnected. Shutdown does not close the cluster.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
		if len(s.sessions) == 0 {
			close(s.idle)
		}
	}
	idle := s.idle
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	for ss := range s.consoles {
		ss.kill(fatalf(codeAdminShutdown, "terminating connection because kproxy is shutting down"))
	}
	s.mu.Unlock()
	if s.paused.Load() {
		_ = s.Resume("") // a paused client would wait forever
	}

	for _, ss := range sessions {
		ss.closeIfIdle()
	}
	select {
	case <-s.stopRefresh:
	default:
		close(s.stopRefresh)
		close(s.stopSweep)
	}
	<-s.refreshDone
	<-s.sweepDone
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for ss := range s.sessions {
			ss.kill(fatalf(codeAdminShutdown, "terminating connection because kproxy is shutting down"))
		}
		s.mu.Unlock()
	}
	s.wg.Wait()
	if s.parker != nil {
		_ = s.parker.Close()
	}
	if s.loops != nil {
		s.loops.close()
	}
	s.workers.Close()
	return err
}

// Classifier returns the classifier the server routes with, for in-process
// clients on the same cluster (pool.NewDB): what one learns, such as a
// statement shape a replica refused, the other knows. It is safe for
// concurrent use and lives as long as the server.
func (s *Server) Classifier() *classify.Classifier { return s.classifier }

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// register adds a logged-in session and gives it a cancel key.
func (s *Server) register(ss *session) (cancelKey, error) {
	var b [8]byte
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return cancelKey{}, fatalf(codeAdminShutdown, "kproxy is shutting down")
	}
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return cancelKey{}, err
		}
		k := cancelKey{pid: binary.BigEndian.Uint32(b[:4]) & 0x7fffffff, secret: binary.BigEndian.Uint32(b[4:])}
		if _, taken := s.byKey[k]; !taken && k.pid != 0 {
			s.byKey[k] = ss
			s.sessions[ss] = struct{}{}
			return k, nil
		}
	}
}

func (s *Server) unregister(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sessions[ss]; !ok {
		return
	}
	delete(s.sessions, ss)
	delete(s.byKey, ss.key)
	if s.draining && len(s.sessions) == 0 && s.idle != nil {
		close(s.idle)
	}
}

// cancel forwards a client's CancelRequest to the server connection running
// that client's statement, if it is running one.
func (s *Server) cancel(k cancelKey) {
	s.mu.Lock()
	ss := s.byKey[k]
	s.mu.Unlock()
	if ss == nil {
		return
	}
	s.stats.cancels.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ss.cancelRunning(ctx); err != nil {
		s.log.Info("forwarding cancel request failed", zap.Error(err))
	}
}

// Stats is a snapshot of the server's clients and counters.
type Stats struct {
	Clients          int   `json:"clients"`
	ClientsAttached  int   `json:"clients_attached"`
	Accepted         int64 `json:"connections_accepted"`
	LoginsFailed     int64 `json:"logins_failed"`
	CancelsForwarded int64 `json:"cancel_requests"`
	// ClientsParked counts the clients whose sockets wait without a
	// goroutine (parked, or on an event loop); Parks counts how often a
	// client was parked or given to its event loop, and HandOffs how often
	// an event loop gave one to a goroutine (the slow path).
	ClientsParked int                 `json:"clients_parked"`
	Parks         int64               `json:"parks_total"`
	HandOffs      int64               `json:"loop_hand_offs_total"`
	PinnedClients map[string]int      `json:"pinned_clients"`
	PinsTotal     map[string]int64    `json:"pins_total"`
	PinSeconds    map[string]float64  `json:"pin_seconds_total"`
	Pools         []pool.Stats        `json:"pools"`
	ClientList    []ClientStats       `json:"client_list"`
	Routing       pool.RoutingStats   `json:"routing"`
	Classifier    classify.CacheStats `json:"classifier"`
}

// ClientStats describes one logged-in client.
type ClientStats struct {
	User     string `json:"user"`
	Database string `json:"database"`
	Mode     string `json:"pool_mode"`
	// ServerPID is the backend PID of the attached server connection, 0
	// when none is attached.
	ServerPID uint32 `json:"server_pid"`
	// Pin is why the client keeps its server connection, "" when it does not.
	Pin           string  `json:"pin,omitempty"`
	PinnedSeconds float64 `json:"pinned_seconds,omitempty"`
	// PreparedStatements counts the client's named statements (transaction
	// mode); Settings the session settings kproxy replays for it.
	PreparedStatements int `json:"prepared_statements"`
	Settings           int `json:"settings"`
}

// Stats returns a snapshot of the server and its pools.
func (s *Server) Stats() Stats {
	st := Stats{
		Accepted:         s.stats.accepted.Load(),
		LoginsFailed:     s.stats.loginsFailed.Load(),
		CancelsForwarded: s.stats.cancels.Load(),
		Parks:            s.stats.parks.Load(),
		PinnedClients:    map[string]int{},
		PinsTotal:        map[string]int64{},
		PinSeconds:       map[string]float64{},
		Pools:            s.cluster.Stats(),
		Routing:          s.cluster.RoutingStats(),
		Classifier:       s.classifier.Stats(),
	}
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	st.Clients = len(sessions)
	if s.parker != nil {
		st.ClientsParked = s.parker.Len()
	}
	st.ClientsParked += int(s.stats.onLoops.Load())
	st.HandOffs = s.stats.handOffs.Load()
	for _, ss := range sessions {
		cs := ss.state()
		if cs.ServerPID != 0 {
			st.ClientsAttached++
		}
		if cs.Pin != "" {
			st.PinnedClients[cs.Pin]++
		}
		st.ClientList = append(st.ClientList, cs)
	}
	sort.Slice(st.ClientList, func(i, j int) bool {
		return st.ClientList[i].User+st.ClientList[i].Database < st.ClientList[j].User+st.ClientList[j].Database
	})
	for i := range s.stats.pins {
		if n := s.stats.pins[i].Load(); n > 0 {
			st.PinsTotal[classify.Effect(i).String()] = n
			st.PinSeconds[classify.Effect(i).String()] = time.Duration(s.stats.pinNanos[i].Load()).Seconds()
		}
	}
	return st
}
