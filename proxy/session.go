package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/evloop"
	"github.com/kproxy/kproxy/internal/netpark"
	"github.com/kproxy/kproxy/internal/pgwire"
	"github.com/kproxy/kproxy/pool"
)

const (
	clientReadBufBytes  = 8 << 10
	clientWriteBufBytes = 8 << 10
)

// session is one client connection after startup.
//
// Two goroutines serve it. The client goroutine (run) reads client messages,
// attaches a server connection when it needs one and forwards the messages.
// While a server connection is attached, a server goroutine (relayServer)
// forwards everything the server sends to the client; in transaction mode
// it also detaches the connection at the safe point: ReadyForQuery with
// status idle, every Sync and Query answered, no extended-protocol batch
// open and no pin. All state that decides detaching is guarded by mu, and
// the client goroutine updates it before forwarding, so the server
// goroutine can never detach a connection a message is on its way to.
//
// Most transactions in transaction mode need no second goroutine: when the
// client's first batch (up to a Query or a Sync) is written with nothing
// behind it, the client goroutine relays the answer itself (relayInline)
// and hands the relay to a server goroutine only if the connection stays
// attached or the server starts a COPY FROM STDIN (see settleRelay).
// Server goroutines come from Server.workers, which keeps them between
// transactions.
type session struct {
	srv      *Server
	nc       net.Conn
	raw      syscall.RawConn // nc's socket when it is a plain one: only those park
	rd       *pgwire.Reader
	user     string
	database string
	// settings are the session settings kproxy keeps applying for the
	// client (guarded by mu once the session runs); settingsKey is their
	// pool.SettingsKey.
	settings    map[string]string
	settingsKey string
	mode        config.PoolMode
	pool        *pool.Pool
	key         cancelKey
	negotiate   []byte
	connectedAt time.Time

	wmu  sync.Mutex
	w    pgwire.Writer // guarded by wmu; its buffer goes back to a free list whenever it is empty
	sent *sentCounter  // guarded by wmu; what w has written to the client

	// Used by the client goroutine only:
	skipping  bool   // drop messages until Sync, after an error kproxy reported mid-batch
	lastBound string // server statement of the latest Bind, for Execute
	toServer  []byte // messages to write to the server connection
	toClient  []byte // responses kproxy makes up, to write to the client

	// routing is set in transaction mode with replicas configured: each
	// transaction goes where the router sends it.
	routing bool

	mu     sync.Mutex
	server *pool.Conn  // guarded by mu
	target pool.Target // guarded by mu; where server came from
	minLSN pool.LSN    // guarded by mu; the primary's WAL position after the client's last write
	wrote  bool        // guarded by mu; the attached transaction sent a write to the primary
	// unnamed is the client's unnamed statement in transaction mode, nil
	// when it has none. Each unnamed Parse makes a new one, and a server
	// connection whose UnnamedOwner is not this very value holds something
	// else there, even if it was this client's once.
	unnamed *clientStmt // guarded by mu
	// describeUnnamed is the unnamed statement the latest message
	// prepared, described with the next one (planLocked).
	describeUnnamed *clientStmt // guarded by mu
	// mayEndTx is set once the batch has sent something that may end a
	// failed transaction (a Bind or a Query) since the last ReadyForQuery.
	mayEndTx bool // guarded by mu
	// portalLocal is set while the portal portalLocalName is bound to a
	// DEALLOCATE that kproxy runs itself (see localDeallocate).
	portalLocal     *localDeallocate // guarded by mu
	portalLocalName string           // guarded by mu
	serverDone      chan struct{}    // guarded by mu; closed when relayServer returns
	// replies lists, in order, what the server owes for the messages sent
	// to it and the responses kproxy must make up in between.
	replies  []reply // guarded by mu
	replyBuf []reply // the array replies starts in whenever it is emptied
	inBatch  bool    // guarded by mu; extended-protocol messages sent since the last Sync
	txStatus byte    // guarded by mu; from the last ReadyForQuery
	// stmts maps the client's named statements to server statements
	// (transaction mode).
	stmts map[string]*clientStmt // guarded by mu
	// descParams holds the ParameterDescription of the Describe whose
	// answer the relay is reading, for its statement's shape; verifyWait
	// is set while the client goroutine waits for the shape of a statement
	// prepared again (verifyLocked), and verifyOK says how it came out.
	descParams []byte // guarded by mu
	verifyWait bool   // guarded by mu
	verifyOK   bool   // guarded by mu
	// pin is why the server connection may not be detached; loaded is set
	// once the client ran LOAD, which cannot be undone or checked.
	pin      classify.Effect // guarded by mu
	pinSince time.Time       // guarded by mu
	loaded   bool            // guarded by mu
	// dirtySettings and checkPins ask relayServer to read the session state
	// back from the server at the next safe point; checking is non-nil
	// while it does.
	dirtySettings bool // guarded by mu
	// customSettings names the custom (dotted) settings the client set,
	// which pg_settings does not list.
	customSettings map[string]bool // guarded by mu
	checkPins      bool            // guarded by mu
	// ranCode is set when the transaction may have run code (a DO block,
	// CALL, a volatile user function), and funcDDL when the client created,
	// changed or dropped a function, to load them again once it commits.
	ranCode  bool          // guarded by mu
	funcDDL  bool          // guarded by mu
	schemaTx bool          // guarded by mu; the transaction may change the schema (Server.schemaGen)
	checking chan struct{} // guarded by mu
	leaving  bool          // guarded by mu; the client is gone, relayServer must stop
	inlineSC *pool.Conn    // guarded by mu; the connection relayInline is relaying, if any
	// pendingRelay is the done channel of an attached connection whose
	// relay has not started yet, and pendingBytes what was written to it
	// meanwhile (see settleRelay). Only the client goroutine uses them.
	pendingRelay chan struct{}
	pendingBytes int
	// writing is set while the client goroutine writes to the server; a
	// detach that happens meanwhile leaves the release to it.
	writing           bool       // guarded by mu
	changed           sync.Cond  // on mu; signalled when writing ends, replies are answered, or relayServer stops
	copyIn            bool       // guarded by mu; the server is in COPY FROM STDIN and ignores Sync and Flush
	releaseAfterWrite *pool.Conn // guarded by mu
	// cancelling counts the cancel requests being forwarded to server;
	// the connection is not released before they are done.
	cancelling int  // guarded by mu
	closed     bool // guarded by mu
	// acquiring is set while the client goroutine waits for a server
	// connection, for acquireCtx, which a cancel request ends with
	// errCancelledWaiting (acquireStop). It is made on first use and again
	// after a cancel ended it.
	acquiring   bool                    // guarded by mu
	acquireCtx  context.Context         // guarded by mu
	acquireStop context.CancelCauseFunc // guarded by mu

	// A transaction on a replica is replayable until something of its
	// answer reaches the client: replayLog keeps its client messages, and
	// sentAtAttach the client byte count when it started. replayNow is set
	// when the replica refused it with 25006 (its answers are dropped until
	// ReadyForQuery); forcePrimary while it runs again on the primary.
	replayOK     bool   // guarded by mu
	replayLog    []byte // guarded by mu
	sentAtAttach int64  // guarded by mu
	replayNow    bool   // guarded by mu
	forcePrimary bool   // guarded by mu
	// readOnPrimary is set while a read whose replica failed runs again on
	// the primary.
	readOnPrimary bool // guarded by mu

	// The event loop (loop.go), for a session that runs on one: the loop
	// and its index, sock for the client socket's reads and writes, cid
	// its registration, and the functions the loop calls, bound once. The
	// fields after them are the loop's while park is parkLoop.
	loop           *evloop.Loop
	loopIdx        int
	sock           *evloop.Sock
	arriveFn       func()
	flushFn        func()
	resumeServerFn func()
	resumeClientFn func()
	cid            evloop.ID
	lsrv           *loopServer // the attached server connection's registration
	post           []byte      // made-up answers behind a server message
	flushQueued    bool        // flushLoop runs at the end of this round
	stalled        bool        // a client message waits for the server's answers
	clientFull     bool        // the client's socket took not all: wait for it
	serverFull     bool        // the server's socket took not all: wait for it
	serverPaused   bool        // relaying the answer stopped: too much waits for the client
	clientPaused   bool        // taking client messages stopped: too much waits for the server
	clientUnread   bool        // the client's socket may hold bytes not read yet
	clientHup      bool        // the client hung up: read until the end of the stream
	// ending is set once the session must not go back to its loop: a
	// socket failed or ended, or the session is closing.
	ending atomic.Bool

	// Parking (park.go): park is the client goroutine's state, waitTick
	// the sweep when its current wait began, parkID the socket's name in
	// the Parker while parked.
	park     atomic.Int32
	waitTick atomic.Int64
	parkMu   sync.Mutex
	parkID   netpark.ID // guarded by parkMu
}

// logger returns the server's logger with the client's user and
// database. It is built on each call, for rare events: a logger kept per
// session would cost every idle client memory.
func (ss *session) logger() *zap.Logger {
	return ss.srv.log.With(zap.String("user", ss.user), zap.String("database", ss.database))
}

// newClientReader reads a client's messages, holding no buffer while the
// client is idle when raw (nc's socket) is not nil.
func newClientReader(nc net.Conn, raw syscall.RawConn, maxBytes int) *pgwire.Reader {
	if raw != nil {
		return pgwire.NewIdleReader(nc, raw, clientReadBufBytes, maxBytes)
	}
	return pgwire.NewReader(nc, clientReadBufBytes, maxBytes)
}

// sentCounter counts the bytes written to a client connection.
type sentCounter struct {
	net.Conn
	n int64
}

func (c *sentCounter) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n += int64(n)
	return n, err
}

func newSession(srv *Server, cfg *config.Config, st *startup) *session {
	raw := rawConn(st.nc)
	ss := &session{
		srv:         srv,
		nc:          st.nc,
		raw:         raw,
		rd:          newClientReader(st.nc, raw, cfg.MaxMessageBytes),
		sent:        &sentCounter{Conn: st.nc},
		user:        st.user,
		database:    st.database,
		settings:    st.settings,
		mode:        cfg.PoolFor(st.database, st.user).Mode,
		negotiate:   st.negotiateMessage(),
		txStatus:    pgwire.TxIdle,
		connectedAt: time.Now(),
		stmts:       map[string]*clientStmt{},
	}
	ss.changed.L = &ss.mu
	ss.w.Init(ss.sent, clientWriteBufBytes, true)
	ss.routing = ss.mode == config.PoolModeTransaction && len(cfg.Replicas) > 0 && cfg.Routing.ReplicaReads
	ss.settingsKey = pool.SettingsKey(ss.settings)
	if srv.loopFor(ss.mode, raw) {
		ss.bindLoop()
	}
	return ss
}

// writeNow encodes m and sends it to the client at once.
func (ss *session) writeNow(m pgproto3.BackendMessage) error {
	b, err := m.Encode(nil)
	if err != nil {
		return err
	}
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if _, err := ss.w.Write(b); err != nil {
		return err
	}
	return ss.w.Flush()
}

// login authenticates the client, attaches a server connection to learn the
// server's parameters (and to check that the database and user work), and
// sends ParameterStatus, BackendKeyData and ReadyForQuery.
func (ss *session) login() error {
	cfg := ss.srv.cfg.Load()
	if len(ss.negotiate) > 0 {
		ss.wmu.Lock()
		_, _ = ss.w.Write(ss.negotiate)
		ss.wmu.Unlock()
	}
	if err := ss.srv.auth.authenticate(ss, cfg); err != nil {
		return err
	}
	if err := ss.writeNow(&pgproto3.AuthenticationOk{}); err != nil {
		return err
	}
	p, err := ss.srv.cluster.Primary(ss.database, ss.user)
	if err != nil {
		return err
	}
	ss.pool = p
	// In transaction mode a login needs no server connection once the
	// pool knows the server's parameters: taking one would make logins
	// queue behind busy transactions (and clients that open a connection
	// per transaction wait on each other).
	// Settings from the start-up packet that no connection of the pool has
	// applied yet are tried now, so that a bad one fails the login, as on
	// Postgres.
	var sc *pool.Conn
	params := p.ServerParams()
	if params == nil || ss.mode == config.PoolModeSession || !p.ValidSettings(ss.settingsKey) {
		if sc, err = ss.acquire(p); err != nil {
			return err
		}
		params = sc.Params()
	} else {
		// The server reports the client's own settings, as they would be
		// after Sync applied them.
		own := make(map[string]string, len(params))
		names := make(map[string]string, len(params)) // lower case → as reported
		for k, v := range params {
			own[k] = v
			names[strings.ToLower(k)] = k
		}
		for k, v := range ss.settings {
			if name, reported := names[strings.ToLower(k)]; reported {
				own[name] = v
			}
		}
		params = own
	}
	key, err := ss.srv.register(ss)
	if err != nil {
		if sc != nil {
			p.Release(sc)
		}
		return err
	}
	ss.key = key

	var buf []byte
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: params[k]}).Encode(buf)
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: key.pid, SecretKey: secretBytes(key.secret)}).Encode(buf)
	buf = append(buf, pgwire.ReadyForQuery(pgwire.TxIdle)...)

	switch {
	case ss.mode == config.PoolModeSession:
		ss.attach(sc)
	case sc != nil:
		p.Release(sc)
	}
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if _, err := ss.w.Write(buf); err != nil {
		return err
	}
	return ss.w.Flush()
}

func secretBytes(s uint32) []byte {
	return []byte{byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)}
}

// acquire takes a server connection from p and applies the client's
// settings to it.
//
// A cancel request that comes while it waits for the pool ends the wait
// with errCancelledWaiting: the client's statement has not begun, so it
// fails as a cancelled one does and nothing of it runs.
func (ss *session) acquire(p *pool.Pool) (*pool.Conn, error) {
	ss.mu.Lock()
	settings, key := ss.settings, ss.settingsKey
	if ss.acquireCtx == nil || ss.acquireCtx.Err() != nil {
		ss.acquireCtx, ss.acquireStop = context.WithCancelCause(context.Background())
	}
	ctx := ss.acquireCtx
	ss.acquiring = true
	ss.mu.Unlock()
	// The pool bounds the wait (acquire_timeout) and the connect
	// (connect_timeout) itself.
	sc, err := p.AcquirePreferring(ctx, key)
	ss.mu.Lock()
	ss.acquiring = false
	ss.mu.Unlock()
	if err != nil {
		if cause := context.Cause(ctx); cause == errCancelledWaiting {
			return nil, cause
		}
		return nil, err
	}
	reset := sc.NeedsReset(ss)
	if !reset && sc.HasSettings(key) {
		return sc, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.Limits().ConnectTimeout)
	defer cancel()
	if reset {
		// Another client ran code on it that may have left anything.
		if err := sc.ResetSession(ctx); err != nil {
			sc.Release() // ResetSession marked it broken; the pool closes it
			return nil, err
		}
	}
	if err := sc.Sync(ctx, settings); err != nil {
		sc.Release() // Sync marked it broken; the pool closes it
		return nil, err
	}
	return sc, nil
}

// attach makes sc the session's server connection and starts relaying what
// the server sends.
func (ss *session) attach(sc *pool.Conn) {
	ss.mu.Lock()
	done := ss.attachLocked(sc)
	ss.mu.Unlock()
	ss.startRelay(sc, done)
}

// attachLocked makes sc the session's server connection without starting
// its relay, and returns the channel the relay must close when it stops.
func (ss *session) attachLocked(sc *pool.Conn) chan struct{} {
	done := make(chan struct{})
	ss.server = sc
	ss.serverDone = done
	return done
}

// startRelay starts the server goroutine of sc, which closes done when it
// stops.
func (ss *session) startRelay(sc *pool.Conn, done chan struct{}) {
	ss.srv.workers.Go(relayJob{ss: ss, sc: sc, done: done})
}

// cancelRunning forwards a cancel request to the server connection if the
// client is waiting for an answer on it, or ends the client's wait for a
// server connection (see acquire). Until the server has taken the
// request, the connection stays with the client (see readyForQueryLocked):
// a cancel that arrived after the answer then finds the backend idle, which
// ignores it, and never a statement of the next client.
func (ss *session) cancelRunning(ctx context.Context) error {
	ss.mu.Lock()
	sc := ss.server
	busy := len(ss.replies) > 0 || ss.inBatch
	if sc == nil && ss.acquiring {
		ss.acquireStop(errCancelledWaiting)
	}
	if sc == nil || !busy {
		ss.mu.Unlock()
		return nil
	}
	ss.cancelling++
	ss.mu.Unlock()
	err := sc.Cancel(ctx)
	ss.mu.Lock()
	ss.cancelling--
	ss.changed.Broadcast()
	ss.mu.Unlock()
	return err
}

// closeIfIdle ends the session now if no transaction is open; otherwise the
// server goroutine ends it at the next idle ReadyForQuery.
func (ss *session) closeIfIdle() {
	ss.mu.Lock()
	idle := ss.idleLocked()
	ss.mu.Unlock()
	if idle {
		ss.kill(fatalf(codeAdminShutdown, "terminating connection because kproxy is shutting down"))
	}
}

// state reports whether a server connection is attached and the pin.
func (ss *session) state() ClientStats {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	cs := ClientStats{
		User: ss.user, Database: ss.database, Mode: string(ss.mode),
		PreparedStatements: len(ss.stmts), Settings: len(ss.settings),
	}
	if ss.server != nil {
		cs.ServerPID = ss.server.PID()
	}
	if ss.pin != classify.EffectNone {
		cs.Pin = ss.pin.String()
		cs.PinnedSeconds = time.Since(ss.pinSince).Seconds()
	}
	return cs
}

// fail sends err to the client.
func (ss *session) fail(err error) {
	if pe := (*Error)(nil); errors.As(err, &pe) && pe.Err != nil {
		ss.logger().Info("closing client connection", zap.Error(err))
	}
	_ = ss.writeClient(encodeError(nil, err), true)
}

// kill sends err to the client and closes its connection, which ends run.
func (ss *session) kill(err error) {
	ss.fail(err)
	ss.closeConn()
}

func (ss *session) closeConn() {
	ss.ending.Store(true)
	ss.unpark()
	_ = ss.nc.Close()
	ss.mu.Lock()
	if sc := ss.inlineSC; sc != nil && ss.server == sc {
		// The client goroutine is relaying (relayInline): it would not
		// notice the client is gone before the server answers. Stop its
		// read as close stops a server goroutine's; close then decides
		// what becomes of the connection.
		ss.leaving = true
		_ = sc.SetReadDeadline(time.Now())
	}
	ss.mu.Unlock()
}

// close gives the server connection back and forgets the session. It is
// called once, by run, when the client is gone.
func (ss *session) close() {
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		return
	}
	ss.closed = true
	ss.leaving = true
	if ss.mode == config.PoolModeTransaction {
		ss.dropAllStmtsLocked()
	}
	sc, done := ss.server, ss.serverDone
	ss.mu.Unlock()
	ss.startPendingRelay(sc) // it closes done, which is waited for below
	ss.closeConn()
	ss.forgetLoop()
	if ss.key != (cancelKey{}) {
		ss.srv.unregister(ss)
	}
	if sc == nil {
		return
	}
	// Stop the server goroutine without closing the server connection. It
	// may be reading back session state, which sets deadlines of its own,
	// so insist until it has stopped.
	for stopped := false; !stopped; {
		_ = sc.SetReadDeadline(time.Now())
		select {
		case <-done:
			stopped = true
		case <-time.After(50 * time.Millisecond):
		}
	}
	_ = sc.SetReadDeadline(time.Time{})

	ss.mu.Lock()
	// A cancel on its way to the backend must land before another client
	// gets it, as at the safe point (readyForQueryLocked): a client may
	// cancel and disconnect at once. No new one starts once server is nil.
	for ss.cancelling > 0 {
		ss.changed.Wait()
	}
	clean := ss.idleLocked() && ss.checking == nil
	ss.server = nil
	target := ss.target
	ss.target = pool.Target{}
	pinned := ss.pin != classify.EffectNone || ss.loaded
	ss.endPinLocked()
	ss.mu.Unlock()
	if !clean {
		// A statement may still be running or a transaction open; closing
		// is the only safe way to end them.
		sc.MarkBroken()
	} else if ss.mode == config.PoolModeSession || pinned {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := sc.Reset(ctx); err != nil {
			sc.MarkBroken()
		}
		cancel()
	}
	target.Done(ss.srv.cluster, nil)
	sc.Release()
}

// cstring returns the NUL-terminated string at the start of b.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
