package proxy

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/evloop"
	"github.com/kproxy/kproxy/internal/pgwire"
	"github.com/kproxy/kproxy/pool"
)

// The event-loop relay (relay_engine: loop).
//
// A session in transaction mode whose client socket is plain TCP or Unix
// belongs, whenever it is idle, to one of the server's event loops
// (package evloop) rather than to a goroutine. The loop reads the client's
// messages and, for each whole one, decides: it runs it itself (handled),
// waits for the server's answers to an earlier batch first (stall), or
// hands the whole session to a goroutine, the slow path (hand-off). On the
// loop run the framing, the classifier, taking an idle server connection
// with the client's settings (TryAcquire), the statement bookkeeping
// (planLocked, when it needs no answer from the server first), writing the
// batch, relaying the answer (answerLocked), and the safe point
// (readyLocked, mayDetachLocked), all with the session's own functions,
// which the goroutine relay uses too. What one round of the loop produces
// for a socket goes out in one write at the end of the round.
//
// The slow path is everything else: waiting for a pool slot, dialling,
// applying settings or resetting a connection, routing to replicas (and
// replays), preparing a statement again where its shape must be checked,
// COPY FROM STDIN, the read-back of session state at the safe point, a
// cancel on its way, function calls, messages larger than the read
// buffer, errors of either socket, and the end of the session. A hand-off
// happens between two messages: what the loop buffered stays in the
// session's reader and writers, a goroutine sends what is waiting, starts
// the server relay if a connection is attached, and goes on with run. When
// run finds the session idle again (no server connection, nothing
// buffered or owed) it gives the session back to its loop (toLoop).
//
// Who owns what: session.park is parkLoop while the loop owns the session,
// its client socket and its attached server connection; every loop-only
// field below is then the loop's. Any other value means goroutines own
// it, and the loop ignores the sockets' events. A server connection's
// registration (loopServer) belongs to one loop and names the session
// holding the connection on that loop, if any.
//
// Back-pressure: the loop stops relaying the server's answer while what
// waits for the client passes loopOutBytes (or the client's socket is
// full), and stops taking client messages while what waits for the
// server does, and resumes in a later round once it has gone.

// loopOutBytes is how much may wait to be sent to one socket before the
// loop stops producing more for it.
const loopOutBytes = 64 << 10

// loopEngine is the server's event loops.
type loopEngine struct {
	loops []*evloop.Loop
	next  atomic.Uint32
}

func newLoopEngine(n int) (*loopEngine, error) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	e := &loopEngine{}
	for range n {
		l, err := evloop.New()
		if err != nil {
			e.close()
			return nil, fmt.Errorf("event loop: %w", err)
		}
		e.loops = append(e.loops, l)
	}
	return e, nil
}

// pick returns the loop for a new session, round robin.
func (e *loopEngine) pick() (int, *evloop.Loop) {
	i := int(e.next.Add(1)-1) % len(e.loops)
	return i, e.loops[i]
}

func (e *loopEngine) close() {
	for _, l := range e.loops {
		_ = l.Close()
	}
}

// loopServer is a server connection's registration with one loop; owner
// is the session holding it there. Only that loop's goroutine uses it.
type loopServer struct {
	loop  *evloop.Loop
	id    evloop.ID
	owner *session
	// hup is set once the server hung up: a short read no longer means
	// the socket is drained.
	hup bool
}

func (ls *loopServer) Event(events uint32) {
	if events&(evloop.Hup|evloop.Error) != 0 {
		ls.hup = true
	}
	if ss := ls.owner; ss != nil {
		ss.serverEvent(events)
	}
}

// loopOutcome is what the loop did with a client message.
type loopOutcome uint8

const (
	loopHandled loopOutcome = iota // done: take the next one
	loopStall                      // it waits for the server's answers
	loopHandOff                    // the slow path's: hand the session to a goroutine
)

// frameOutcome is what the loop did with a server message.
type frameOutcome uint8

const (
	frameNext     frameOutcome = iota // relayed: take the next one
	frameDetached                     // a safe point: the connection went back to its pool
	frameHandOff                      // the slow path's
)

// toLoop gives the session to its loop when it is idle: no server
// connection, nothing buffered from the client or owed by a server. It
// reports whether it did; run must then return without touching the
// session.
func (ss *session) toLoop() bool {
	if !ss.rd.Idle() || ss.ending.Load() {
		return false
	}
	ss.mu.Lock()
	idle := ss.server == nil && len(ss.replies) == 0 && ss.checking == nil && !ss.closed && !ss.leaving &&
		ss.pendingRelay == nil && !ss.skipping && ss.pin == 0 && !ss.loaded
	if idle { // nothing owed: the queue's array goes
		ss.replies, ss.replyBuf = nil, nil
	}
	ss.mu.Unlock()
	if !idle {
		return false
	}
	ss.wmu.Lock()
	err := ss.w.Flush()
	ss.wmu.Unlock()
	if err != nil || !ss.rd.Release() {
		return false
	}
	ss.srv.wg.Add(1) // for the goroutine a hand-off starts
	ss.srv.stats.onLoops.Add(1)
	ss.park.Store(parkLoop)
	if ss.loop.Post(ss.arriveFn) != nil {
		ss.park.Store(parkBusy)
		ss.srv.stats.onLoops.Add(-1)
		ss.srv.wg.Done()
		return false
	}
	ss.srv.stats.parks.Add(1)
	return true
}

// arrive is the loop's first look at a session run gave it.
func (ss *session) arrive() {
	if ss.park.Load() != parkLoop {
		return
	}
	if ss.cid == 0 {
		id, err := ss.loop.Register(ss.raw, ss)
		if err != nil {
			ss.handOff()
			return
		}
		ss.cid = id
	}
	ss.readClient(false) // bytes may have come before the registration
}

// Event handles the client socket's events.
func (ss *session) Event(events uint32) {
	if ss.park.Load() != parkLoop {
		return
	}
	if events&evloop.Out != 0 && ss.clientFull {
		ss.flushLoop()
		if ss.park.Load() != parkLoop {
			return
		}
	}
	if events&(evloop.Hup|evloop.Error) != 0 {
		// A short read no longer means the socket is drained: the end of
		// the stream may wait behind what it returned, with no event to
		// come for it.
		ss.clientHup = true
	}
	if events&(evloop.In|evloop.Hup|evloop.Error) != 0 {
		ss.readClient(false)
	}
}

// readClient takes the client's whole messages, reading from the socket
// until it is drained (or was already, when drained is set), and stops
// while the session stalls or too much waits for the server; clientUnread
// then says whether the socket may hold more.
func (ss *session) readClient(drained bool) {
	for {
		if ss.stalled || ss.serverFull || ss.server != nil && ss.server.WriteBuffered() >= loopOutBytes {
			ss.clientPaused = !ss.stalled
			ss.clientUnread = !drained
			return
		}
		for {
			t, msg, ok := ss.rd.Peek()
			if !ok {
				break
			}
			switch ss.loopMessage(t, msg) {
			case loopStall:
				ss.stalled = true
				ss.clientUnread = !drained
				return
			case loopHandOff:
				ss.handOff()
				return
			}
			if ss.park.Load() != parkLoop {
				return
			}
		}
		if ss.rd.Oversized() {
			ss.handOff()
			return
		}
		if drained && !ss.clientHup {
			ss.clientUnread = false
			return
		}
		_, full, err := ss.rd.FillFrom(ss.sock)
		if errors.Is(err, syscall.EAGAIN) {
			ss.clientUnread = false
			return
		}
		if err != nil {
			ss.handOffEnding() // the goroutine meets the end or the error itself
			return
		}
		drained = !full && !ss.clientHup
	}
}

// loopMessage runs client message (t, msg), the next whole one in the
// reader, on the loop if it can, taking it from the reader then.
func (ss *session) loopMessage(t byte, msg []byte) loopOutcome {
	switch t {
	case 'Q', 'P', 'B', 'E', 'D', 'C', 'H', 'S':
	default:
		return loopHandOff // Terminate, FunctionCall, copy data: the goroutine's
	}
	ss.mu.Lock()
	if ss.checking != nil || ss.server == nil && ss.srv.paused.Load() {
		ss.mu.Unlock()
		return loopHandOff
	}
	if ss.writeBehindReplicaReadsLocked(t, msg) || ss.readsOwedRebindLocked(t, msg) {
		ss.mu.Unlock()
		return loopStall
	}
	if ss.skipping && t != 'S' {
		ss.mu.Unlock()
		ss.rd.Next() //nolint:errcheck // a whole frame is buffered
		return loopHandled
	}
	sc := ss.server
	if sc == nil {
		if out, flushNow, done := ss.withoutServerLocked(t, msg); done {
			ss.mu.Unlock()
			ss.rd.Next() //nolint:errcheck // a whole frame is buffered
			if len(out) > 0 || flushNow {
				ss.appendClient(out)
			}
			return loopHandled
		}
		if ss.routing {
			ss.mu.Unlock()
			return loopHandOff
		}
		target, err := ss.srv.cluster.Route(ss.database, ss.user, false, 0)
		if err != nil {
			ss.mu.Unlock()
			return loopHandOff
		}
		sc = target.Pool.TryAcquire(ss.settingsKey, ss.loopIdx)
		if sc == nil {
			ss.mu.Unlock()
			return loopHandOff
		}
		if sc.Sock() == nil || sc.NeedsReset(ss) || !sc.HasSettings(ss.settingsKey) || !ss.serverOnLoop(sc) {
			ss.mu.Unlock()
			sc.Release()
			return loopHandOff
		}
		ss.attachForLocked(sc, target, 0, t, msg)
	}
	if ss.planWaitsLocked(sc, t, msg) {
		ss.mu.Unlock()
		return loopHandOff // with the connection attached: the hand-off starts its relay
	}
	if t == 'S' {
		ss.skipping = false
	}
	err := ss.planLocked(sc, t, msg)
	toServer, toClient := ss.toServer, ss.toClient
	ss.mu.Unlock()
	if err != nil {
		// planWaitsLocked lets no malformed message through.
		ss.srv.log.Error("event loop: planning failed", zap.Error(err))
	}
	ss.rd.Next() //nolint:errcheck // a whole frame is buffered
	if len(toServer) > 0 {
		sc.Append(toServer)
		ss.queueFlush()
	}
	if len(toClient) > 0 || t == 'H' {
		ss.appendClient(toClient)
	}
	ss.toServer, ss.toClient = toServer[:0], toClient[:0]
	return loopHandled
}

// planWaitsLocked reports whether planning client message (t, msg) on sc
// would wait for the server (a statement prepared again whose shape must
// be checked: verifyLocked), or whether the message is malformed: both
// are the slow path's.
func (ss *session) planWaitsLocked(sc *pool.Conn, t byte, msg []byte) bool {
	body := msg[5:]
	var name []byte
	switch t {
	case 'P':
		_, _, _, ok := splitParse(body)
		return !ok
	case 'B':
		n, _, _, ok := bindStatement(body)
		if !ok {
			return true
		}
		name = n
	case 'D':
		if len(body) < 2 {
			return true
		}
		if body[0] != 'S' {
			return false
		}
		name = body[1 : len(body)-1]
	default:
		return false
	}
	if len(name) == 0 {
		u := ss.unnamed
		return u != nil && (u.view != nil || sc.UnnamedOwner() != any(u) && u.shape != 0)
	}
	cs := ss.stmts[string(name)]
	switch {
	case cs == nil || cs.local != nil:
		return false
	case cs.view != nil:
		return true
	case cs.shape == 0 || cs.sc == sc && sc.HasStmt(cs.name):
		return false
	}
	return !sc.ReadyStmt(cs.id())
}

// serverOnLoop registers sc's socket with the session's loop, if it is
// not yet, and makes the session its owner there. mu is held.
func (ss *session) serverOnLoop(sc *pool.Conn) bool {
	ls, _ := sc.LoopState().(*loopServer)
	if ls == nil || ls.loop != ss.loop {
		if ls != nil {
			// Registered with another loop, where it is idle: leave it.
			old := ls
			raw := sc.Sock().Raw()
			_ = old.loop.Post(func() { old.loop.Deregister(old.id, raw) })
		}
		ls = &loopServer{loop: ss.loop}
		id, err := ss.loop.Register(sc.Sock().Raw(), ls)
		if err != nil {
			sc.SetLoopState(nil, nil)
			return false
		}
		ls.id = id
		loop, raw := ss.loop, sc.Sock().Raw()
		sc.SetLoopState(ls, func() { _ = loop.Post(func() { loop.Deregister(id, raw) }) })
		sc.SetHome(ss.loopIdx)
	}
	ls.owner = ss
	ss.lsrv = ls
	return true
}

// serverEvent handles the events of the attached server connection's
// socket.
func (ss *session) serverEvent(events uint32) {
	if ss.park.Load() != parkLoop || ss.server == nil {
		return
	}
	if events&evloop.Out != 0 && ss.serverFull {
		ss.flushLoop()
		if ss.park.Load() != parkLoop || ss.server == nil {
			return
		}
	}
	if events&(evloop.In|evloop.Hup|evloop.Error) != 0 {
		ss.readServer(false)
	}
}

// readServer relays the server's whole messages, reading from its socket
// until it is drained (or was already, when drained is set), and stops
// while what waits for the client is too much.
func (ss *session) readServer(drained bool) {
	sc := ss.server
	for sc != nil {
		for {
			if ss.clientFull || ss.clientBuffered() >= loopOutBytes {
				ss.serverPaused = true
				ss.queueFlush()
				return
			}
			t, msg, ok := sc.Peek()
			if !ok {
				break
			}
			switch ss.loopAnswer(sc, t, msg) {
			case frameHandOff:
				ss.handOff()
				return
			case frameDetached:
				// Client messages that waited for this answer go on.
				ss.stalled = false
				ss.readClient(!ss.clientUnread)
				return
			}
		}
		if ss.stalled {
			ss.stalled = false
			ss.readClient(!ss.clientUnread)
			if ss.park.Load() != parkLoop || ss.server != sc {
				return
			}
		}
		if sc.Oversized() {
			ss.handOff()
			return
		}
		if drained && !ss.lsrv.hup {
			return
		}
		_, full, err := sc.Fill()
		if errors.Is(err, syscall.EAGAIN) {
			return
		}
		if err != nil {
			ss.handOffEnding() // the relay goroutine meets the error itself
			return
		}
		drained = !full && !ss.lsrv.hup
	}
}

// loopAnswer relays server message (t, msg), the next whole one in sc's
// reader, on the loop if it can, taking it from the reader then: the
// per-message work of relay.
func (ss *session) loopAnswer(sc *pool.Conn, t byte, msg []byte) frameOutcome {
	switch t {
	case 'G', 'W':
		return frameHandOff // COPY FROM STDIN and COPY BOTH: the client sends next
	case 'C', 'E':
		sc.NoteResult(t == 'E')
	case '1', '2', '3', 'n', 't', 'T', 'I', 's':
	case 'Z':
		if len(msg) != 6 {
			return frameHandOff
		}
		ss.mu.Lock()
		slow := ss.dirtySettings || ss.checkPins || ss.wrote || ss.cancelling > 0 || ss.leaving || ss.srv.isDraining()
		ss.mu.Unlock()
		if slow {
			return frameHandOff // the read-back, a cancel on its way, the end
		}
	case 'S':
		// A reported setting changed: read the settings back at the safe
		// point, which the slow path does.
		ss.mu.Lock()
		ss.dirtySettings = true
		ss.mu.Unlock()
		fallthrough
	default: // rows, copy data, notices: never the end of an answer
		sc.Next() //nolint:errcheck // a whole message is buffered
		ss.appendClient(msg)
		return frameNext
	}
	sc.Next() //nolint:errcheck // a whole message is buffered
	ss.mu.Lock()
	if t == 'C' || t == 'E' || t == 'Z' {
		ss.copyIn = false
	}
	msg, forward := ss.answerLocked(sc, t, msg)
	post := ss.post[:0]
	if t != 'Z' {
		post = ss.takeMadeUpLocked(post)
		ss.mu.Unlock()
		if forward {
			ss.appendClient(msg)
		}
		if len(post) > 0 {
			ss.appendClient(post)
		}
		ss.post = post[:0]
		return frameNext
	}
	safe := ss.readyLocked(msg[5], &post)
	detach := ss.mayDetachLocked(safe)
	var target pool.Target
	var done chan struct{}
	if detach {
		done = ss.pendingRelay
		ss.pendingRelay = nil
		target = ss.detachLocked()
	}
	ss.mu.Unlock()
	ss.appendClient(pgwire.ReadyForQuery(msg[5]))
	if len(post) > 0 {
		ss.appendClient(post)
	}
	ss.post = post[:0]
	if !detach {
		return frameNext
	}
	ss.lsrv.owner = nil
	ss.lsrv = nil
	if done != nil {
		close(done)
	}
	sc.Release()
	target.Done(ss.srv.cluster, nil)
	return frameDetached
}

// clientBuffered reports how much waits to be sent to the client. Other
// goroutines write there too (kill), under wmu.
func (ss *session) clientBuffered() int {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	return ss.w.Buffered()
}

// appendClient buffers b for the client and queues the round's flush.
func (ss *session) appendClient(b []byte) {
	ss.wmu.Lock()
	ss.w.Append(b)
	ss.wmu.Unlock()
	ss.queueFlush()
}

// queueFlush makes the loop flush the session's sockets at the end of
// this round, once.
func (ss *session) queueFlush() {
	if !ss.flushQueued {
		ss.flushQueued = true
		ss.loop.Defer(ss.flushFn)
	}
}

// flushLoop sends what waits for the server and for the client, as much
// as their sockets take, and lets a side that stopped for back-pressure
// go on in the next round.
func (ss *session) flushLoop() {
	ss.flushQueued = false
	if ss.park.Load() != parkLoop {
		return
	}
	if sc := ss.server; sc != nil && sc.WriteBuffered() > 0 {
		all, err := sc.FlushLoop()
		if err != nil {
			ss.handOffEnding() // the relay goroutine meets the broken connection
			return
		}
		ss.serverFull = !all
	} else {
		ss.serverFull = false
	}
	ss.wmu.Lock()
	n, all, err := ss.w.FlushTo(ss.sock)
	ss.sent.n += int64(n)
	ss.wmu.Unlock()
	if err != nil {
		ss.handOffEnding() // the client is gone: the goroutine ends the session
		return
	}
	ss.clientFull = !all
	if ss.serverPaused && !ss.clientFull {
		ss.serverPaused = false
		ss.loop.Later(ss.resumeServerFn)
	}
	if ss.clientPaused && !ss.serverFull {
		ss.clientPaused = false
		ss.loop.Later(ss.resumeClientFn)
	}
}

func (ss *session) resumeServer() {
	if ss.park.Load() == parkLoop && ss.server != nil {
		ss.readServer(false)
	}
}

func (ss *session) resumeClient() {
	if ss.park.Load() == parkLoop {
		ss.readClient(!ss.clientUnread)
	}
}

// handOffEnding hands the session off for good: a socket failed or ended,
// or the session is being closed, and the goroutine that meets it ends
// the session rather than giving it back (toLoop).
func (ss *session) handOffEnding() {
	ss.ending.Store(true)
	ss.handOff()
}

// handOff gives the session, and the server connection attached to it on
// the loop, to a goroutine: the slow path. It runs on the loop.
func (ss *session) handOff() {
	sc := ss.server
	if ls := ss.lsrv; ls != nil {
		ls.owner = nil
		ss.lsrv = nil
	}
	ss.stalled, ss.clientFull, ss.serverFull, ss.serverPaused, ss.clientPaused = false, false, false, false, false
	ss.park.Store(parkBusy)
	ss.srv.stats.onLoops.Add(-1)
	ss.srv.stats.handOffs.Add(1)
	go ss.slowPath(sc)
}

// slowPath takes a session the loop handed off: it sends what the loop
// left buffered, starts the server relay if a connection is attached, and
// serves the client as run does.
func (ss *session) slowPath(sc *pool.Conn) {
	defer ss.srv.wg.Done()
	ss.wmu.Lock()
	err := ss.w.Flush()
	ss.wmu.Unlock()
	if sc != nil {
		if ferr := sc.Flush(); ferr != nil && err == nil {
			err = ferr
		}
		ss.startPendingRelay(sc)
	}
	if err != nil {
		ss.closeConn()
	}
	ss.serve()
}

// leaveLoop takes the session from its loop for a goroutine that must end
// it (closeConn): the loop hands it off, if it still has it.
func (ss *session) leaveLoop() {
	loop := ss.loop
	_ = loop.Post(func() {
		if ss.park.Load() == parkLoop {
			ss.handOffEnding()
		}
	})
}

// forgetLoop drops the client socket's registration once the session has
// ended.
func (ss *session) forgetLoop() {
	if ss.loop == nil {
		return
	}
	loop, id, raw := ss.loop, ss.cid, ss.raw
	_ = loop.Post(func() {
		if id != 0 {
			loop.Deregister(id, raw)
		}
	})
}

// loopFor tells whether a session of mode on socket raw runs on the
// server's event loops.
func (s *Server) loopFor(mode config.PoolMode, raw syscall.RawConn) bool {
	return s.loops != nil && mode == config.PoolModeTransaction && raw != nil
}

// bindLoop gives the session its loop and what the loop calls it with.
func (ss *session) bindLoop() {
	ss.loopIdx, ss.loop = ss.srv.loops.pick()
	ss.sock = evloop.NewSock(ss.raw)
	ss.arriveFn = ss.arrive
	ss.flushFn = ss.flushLoop
	ss.resumeServerFn = ss.resumeServer
	ss.resumeClientFn = ss.resumeClient
}
