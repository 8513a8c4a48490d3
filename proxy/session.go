package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/config"
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
type session struct {
	srv       *Server
	log       *zap.Logger
	nc        net.Conn
	rd        *pgwire.Reader
	user      string
	database  string
	settings  map[string]string
	mode      config.PoolMode
	pool      *pool.Pool
	key       cancelKey
	negotiate []byte

	wmu sync.Mutex
	w   *bufio.Writer // guarded by wmu

	// skipping is set after an error kproxy reported in the middle of an
	// extended-protocol batch: messages are dropped until the next Sync, as
	// Postgres does. Used by the client goroutine only.
	skipping bool

	mu         sync.Mutex
	server     *pool.Conn      // guarded by mu
	serverDone chan struct{}   // guarded by mu; closed when relayServer returns
	pending    int             // guarded by mu; Sync/Query/FunctionCall not yet answered by ReadyForQuery
	inBatch    bool            // guarded by mu; extended-protocol messages sent since the last Sync
	txStatus   byte            // guarded by mu; from the last ReadyForQuery
	pin        classify.Effect // guarded by mu; why the server connection may not be detached
	leaving    bool            // guarded by mu; the client is gone, relayServer must stop
	// writing is set while the client goroutine writes to the server; a
	// detach that happens meanwhile leaves the release to it.
	writing           bool       // guarded by mu
	releaseAfterWrite *pool.Conn // guarded by mu
	closed            bool       // guarded by mu
}

func newSession(srv *Server, cfg *config.Config, st *startup) *session {
	return &session{
		srv:       srv,
		log:       srv.log.With(zap.String("user", st.user), zap.String("database", st.database)),
		nc:        st.nc,
		rd:        pgwire.NewReader(st.nc, clientReadBufBytes, cfg.MaxMessageBytes),
		w:         bufio.NewWriterSize(st.nc, clientWriteBufBytes),
		user:      st.user,
		database:  st.database,
		settings:  st.settings,
		mode:      cfg.PoolFor(st.database, st.user).Mode,
		negotiate: st.negotiateMessage(),
		txStatus:  pgwire.TxIdle,
	}
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
	sc, err := ss.acquire()
	if err != nil {
		return err
	}
	key, err := ss.srv.register(ss)
	if err != nil {
		p.Release(sc)
		return err
	}
	ss.key = key

	var buf []byte
	params := sc.Params()
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

	if ss.mode == config.PoolModeSession {
		ss.attach(sc)
	} else {
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

// acquire takes a server connection from the pool and applies the client's
// settings to it.
func (ss *session) acquire() (*pool.Conn, error) {
	limits := ss.pool.Limits()
	ctx, cancel := context.WithTimeout(context.Background(), limits.AcquireTimeout+limits.ConnectTimeout)
	defer cancel()
	sc, err := ss.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if err := sc.Sync(ctx, ss.settings); err != nil {
		ss.pool.Release(sc) // Sync marked it broken; the pool closes it
		return nil, err
	}
	return sc, nil
}

// attach makes sc the session's server connection and starts relaying what
// the server sends.
func (ss *session) attach(sc *pool.Conn) {
	done := make(chan struct{})
	ss.mu.Lock()
	ss.server = sc
	ss.serverDone = done
	ss.mu.Unlock()
	go ss.relayServer(sc, done)
}

// run is the client goroutine: it reads client messages until the client
// leaves, then gives the server connection back.
func (ss *session) run() {
	defer ss.close()
	for {
		t, msg, err := ss.rd.Next()
		if err != nil {
			if errors.Is(err, pgwire.ErrTooLarge) || errors.Is(err, pgwire.ErrMalformed) {
				ss.fail(err)
			}
			return
		}
		var fwd forward
		switch t {
		case 'X':
			return
		case 'Q':
			fwd = forward{sync: true, effect: classify.SessionEffect(cstring(msg[5:]))}
		case 'P':
			fwd = forward{batch: true, effect: parseEffect(msg[5:])}
			if ss.mode == config.PoolModeTransaction && len(msg) > 5 && msg[5] != 0 {
				// A named statement outlives the transaction.
				fwd.effect = classify.EffectPrepare
			}
		case 'B', 'E', 'D', 'C', 'H':
			fwd = forward{batch: true}
		case 'S', 'F':
			fwd = forward{sync: true}
		case 'd', 'c', 'f':
			// Copy messages outside COPY are ignored, as Postgres does.
			ss.mu.Lock()
			attached := ss.server != nil
			ss.mu.Unlock()
			if !attached {
				continue
			}
		default:
			ss.fail(fatalf(codeProtocolViolation, "invalid frontend message type %d", t))
			return
		}
		if ss.skipping {
			if t == 'S' {
				ss.skipping = false
				ss.writeClient(pgwire.ReadyForQuery(ss.currentTxStatus()), true)
			}
			continue
		}
		if !ss.forward(t, msg, fwd) {
			return
		}
	}
}

// forward says how a client message changes the session's state.
type forward struct {
	sync   bool            // answered by ReadyForQuery
	batch  bool            // part of an extended-protocol batch
	effect classify.Effect // session state it leaves on the server
}

// forward sends one client message to the server connection, attaching one
// first if needed. It returns false when the session must end.
func (ss *session) forward(t byte, msg []byte, f forward) bool {
	ss.mu.Lock()
	sc := ss.server
	if sc == nil {
		ss.mu.Unlock()
		var err error
		sc, err = ss.acquire()
		if err != nil {
			return ss.attachFailed(t, err)
		}
		ss.attach(sc)
		ss.mu.Lock()
	}
	if f.sync {
		ss.pending++
		ss.inBatch = false
	} else if f.batch {
		ss.inBatch = true
	}
	if f.effect != classify.EffectNone && ss.pin == classify.EffectNone && ss.mode == config.PoolModeTransaction {
		ss.pin = f.effect
		ss.srv.stats.pins[f.effect].Add(1)
		ss.log.Debug("client pinned to its server connection", zap.Stringer("reason", f.effect))
	}
	ss.writing = true
	ss.mu.Unlock()

	err := sc.Write(msg)
	if err == nil && ss.rd.Buffered() == 0 {
		err = sc.Flush()
	}

	// The answer may have come back, and the connection been detached,
	// before Flush returned; the release then waited for us.
	ss.mu.Lock()
	ss.writing = false
	rel := ss.releaseAfterWrite
	ss.releaseAfterWrite = nil
	ss.mu.Unlock()
	if rel != nil {
		ss.pool.Release(rel)
	}
	if err != nil {
		ss.fail(&Error{Severity: severityFatal, Code: codeConnectionFailure, Message: "lost connection to the server", Err: err})
		return false
	}
	return true
}

// attachFailed reports a failure to get a server connection the way
// Postgres reports an error at that point of the protocol.
func (ss *session) attachFailed(t byte, err error) bool {
	ss.log.Info("no server connection for client", zap.Error(err))
	buf := encodeError(nil, err)
	switch t {
	case 'Q', 'S', 'F':
		buf = append(buf, pgwire.ReadyForQuery(ss.currentTxStatus())...)
	default:
		ss.skipping = true
	}
	return ss.writeClient(buf, true) == nil
}

func (ss *session) currentTxStatus() byte {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.txStatus
}

// writeClient writes raw bytes to the client, flushing when asked.
func (ss *session) writeClient(b []byte, flush bool) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if _, err := ss.w.Write(b); err != nil {
		return err
	}
	if flush {
		return ss.w.Flush()
	}
	return nil
}

func (ss *session) flushClient() error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	return ss.w.Flush()
}

// relayServer is the server goroutine: it forwards server messages to the
// client until the connection is detached, the client leaves, or the server
// connection fails.
func (ss *session) relayServer(sc *pool.Conn, done chan struct{}) {
	defer close(done)
	for {
		t, msg, err := sc.Next()
		if err != nil {
			ss.mu.Lock()
			leaving := ss.leaving
			ss.mu.Unlock()
			if !leaving {
				ss.log.Info("server connection lost", zap.Uint32("server_pid", sc.PID()), zap.Error(err))
				ss.kill(&Error{Severity: severityFatal, Code: codeConnectionFailure,
					Message: "server closed the connection unexpectedly", Err: err})
			}
			return
		}
		if t != 'Z' {
			if ss.writeClient(msg, sc.Buffered() == 0) != nil {
				sc.MarkBroken()
				ss.closeConn()
				return
			}
			continue
		}
		if len(msg) != 6 {
			sc.MarkBroken()
			ss.kill(fatalf(codeProtocolViolation, "server sent a malformed ReadyForQuery"))
			return
		}
		st := msg[5]
		ss.mu.Lock()
		if ss.pending > 0 {
			ss.pending--
		}
		ss.txStatus = st
		idle := ss.pending == 0 && !ss.inBatch && st == pgwire.TxIdle
		detach := idle && ss.mode == config.PoolModeTransaction && ss.pin == classify.EffectNone && !ss.leaving
		release := detach
		if detach {
			ss.server = nil
			ss.serverDone = nil
			if ss.writing {
				ss.releaseAfterWrite = sc
				release = false
			}
		}
		ss.mu.Unlock()
		// msg belongs to sc's reader, which is not ours once detached.
		werr := ss.writeClient(pgwire.ReadyForQuery(st), false)
		if release {
			ss.pool.Release(sc)
		}
		if werr == nil {
			werr = ss.flushClient()
		}
		if idle && ss.srv.isDraining() {
			ss.kill(fatalf(codeAdminShutdown, "terminating connection because kproxy is shutting down"))
		}
		if detach {
			return
		}
		if werr != nil {
			ss.closeConn()
			return
		}
	}
}

// cancelRunning forwards a cancel request to the server connection if the
// client is waiting for an answer on it.
func (ss *session) cancelRunning(ctx context.Context) error {
	ss.mu.Lock()
	sc := ss.server
	busy := ss.pending > 0 || ss.inBatch
	ss.mu.Unlock()
	if sc == nil || !busy {
		return nil
	}
	return sc.Cancel(ctx)
}

// closeIfIdle ends the session now if no transaction is open; otherwise the
// server goroutine ends it at the next idle ReadyForQuery.
func (ss *session) closeIfIdle() {
	ss.mu.Lock()
	idle := ss.pending == 0 && !ss.inBatch && ss.txStatus == pgwire.TxIdle
	ss.mu.Unlock()
	if idle {
		ss.kill(fatalf(codeAdminShutdown, "terminating connection because kproxy is shutting down"))
	}
}

// state reports whether a server connection is attached and the pin.
func (ss *session) state() (bool, classify.Effect) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.server != nil, ss.pin
}

// fail sends err to the client.
func (ss *session) fail(err error) {
	if pe := (*Error)(nil); errors.As(err, &pe) && pe.Err != nil {
		ss.log.Info("closing client connection", zap.Error(err))
	}
	_ = ss.writeClient(encodeError(nil, err), true)
}

// kill sends err to the client and closes its connection, which ends run.
func (ss *session) kill(err error) {
	ss.fail(err)
	ss.closeConn()
}

func (ss *session) closeConn() {
	_ = ss.nc.Close()
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
	sc, done := ss.server, ss.serverDone
	ss.mu.Unlock()
	ss.closeConn()
	if ss.key != (cancelKey{}) {
		ss.srv.unregister(ss)
	}
	if sc == nil {
		return
	}
	// Stop the server goroutine without closing the server connection.
	_ = sc.SetReadDeadline(time.Now())
	<-done
	_ = sc.SetReadDeadline(time.Time{})

	ss.mu.Lock()
	clean := ss.pending == 0 && !ss.inBatch && ss.txStatus == pgwire.TxIdle
	ss.server = nil
	pinned := ss.pin != classify.EffectNone
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
	ss.pool.Release(sc)
}

// parseEffect classifies the query text of a Parse message body.
func parseEffect(body []byte) classify.Effect {
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return classify.EffectNone
	}
	return classify.SessionEffect(cstring(body[i+1:]))
}

// cstring returns the NUL-terminated string at the start of b.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func effectName(i int) string { return classify.Effect(i).String() }
