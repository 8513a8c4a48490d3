package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgwire"
	"github.com/kproxy/kproxy/pool"
)

// replyKind says what to do with the server's answer to one message, or
// which answer kproxy makes up itself at that point of the stream.
type replyKind uint8

const (
	replyForward       replyKind = iota // the server answers a client message: forward the answer
	replySwallow                        // the server answers a message kproxy added: drop it, but pass errors on
	replyParseComplete                  // make up ParseComplete: the statement was already prepared
	replyCloseComplete                  // make up CloseComplete: the server statement stays for others
	replyFrame                          // make up frame: kproxy answers the message itself
)

// reply is one entry of a session's reply queue.
type reply struct {
	kind   replyKind
	msg    byte        // frontend message type the server answers
	stmt   string      // server statement a Parse prepares, a Close closes, or a Bind/Execute uses
	client string      // client statement a Parse defines or a Close removed
	saved  *clientStmt // statement a made-up CloseComplete or DEALLOCATE removed, restored if its batch fails
	// savedAll holds the statements a made-up DEALLOCATE ALL removed, by
	// name, restored if its batch fails.
	savedAll map[string]*clientStmt
	frame    []byte // replyFrame's answer; with substitute, the ErrorResponse that replaces the server's
	// cs is the client statement whose Parse this answers, or whose shape
	// this Describe learns or, with verify, checks.
	cs         *clientStmt
	verify     bool
	substitute bool // the server's ErrorResponse is replaced by frame
	// errPrefix goes to the client before the server's ErrorResponse, if
	// one comes: the ParameterDescription Postgres sends before it checks a
	// described statement against the schema.
	errPrefix []byte
	gen       uint64 // the schema generation a Parse and its Describe were sent in
	// setsUnnamed: the message replaced or dropped the client's unnamed
	// statement, which was prevUnnamed; it is given back if the server
	// skips the message.
	setsUnnamed bool
	prevUnnamed *clientStmt
	dropsAll    bool // a Query with DEALLOCATE ALL or DISCARD ALL
	// scratch: a message of kproxy's check of a Bind's values on its own
	// statement (checkValuesLocked).
	scratch bool
	failed  bool // an ErrorResponse arrived for it
}

func (r *reply) fromServer() bool { return r.kind <= replySwallow }

// ends reports whether server message t completes the answer to frontend
// message msg (errors aside).
func ends(msg, t byte) bool {
	switch msg {
	case 'P':
		return t == '1'
	case 'B':
		return t == '2'
	case 'D':
		return t == 'T' || t == 'n'
	case 'E':
		return t == 'C' || t == 'I' || t == 's'
	case 'C':
		return t == '3'
	default: // Sync, Query, FunctionCall
		return t == 'Z'
	}
}

// extended reports whether an error answering msg makes the server skip
// everything up to the next Sync.
func extended(msg byte) bool {
	return msg == 'P' || msg == 'B' || msg == 'D' || msg == 'E' || msg == 'C'
}

// serve runs the client goroutine until the client leaves or the session
// parks.
func (ss *session) serve() {
	if !ss.run() {
		ss.close()
	}
}

// run is the client goroutine: it reads client messages until the client
// leaves, or it is idle and parks (then it reports true and the session
// must not be touched). A client that leaves is the caller's to close.
func (ss *session) run() (parked bool) {
	for {
		if ss.loop != nil && ss.toLoop() {
			return true
		}
		waiting := ss.startWait()
		t, msg, err := ss.rd.Next()
		if waiting && ss.endWait(err) {
			if ss.parkNow() {
				return true
			}
			continue
		}
		if err != nil {
			if errors.Is(err, pgwire.ErrTooLarge) || errors.Is(err, pgwire.ErrMalformed) {
				ss.fail(err)
			}
			if errors.Is(err, io.EOF) {
				// A client that half-closes still gets the answers to what
				// it sent, as from Postgres.
				ss.awaitAnswers()
			}
			return false
		}
		switch t {
		case 'X':
			return false
		case 'Q', 'P', 'B', 'E', 'D', 'C', 'H', 'S', 'F', 'd', 'c', 'f':
			if !ss.handle(t, msg) {
				return false
			}
		default:
			ss.fail(fatalf(codeProtocolViolation, "invalid frontend message type %d", t))
			return false
		}
	}
}

// maxAnswerWait bounds how long a half-closed client's answers are awaited.
const maxAnswerWait = 5 * time.Minute

// awaitAnswers waits until the server has answered everything sent to it.
func (ss *session) awaitAnswers() {
	timedOut := false
	t := time.AfterFunc(maxAnswerWait, func() {
		ss.mu.Lock()
		timedOut = true
		ss.changed.Broadcast()
		ss.mu.Unlock()
	})
	defer t.Stop()
	ss.mu.Lock()
	for ss.awaitingLocked() && ss.server != nil && !ss.serverGoneLocked() && !timedOut {
		ss.changed.Wait()
	}
	ss.mu.Unlock()
	// The server goroutine takes wmu before it lets go of mu, so an answer
	// whose reply has left the queue is being written now: let it finish
	// before the connection closes.
	ss.wmu.Lock()
	ss.wmu.Unlock() //nolint:staticcheck // an empty critical section waits for the writer
}

// serverGoneLocked reports whether the server goroutine has stopped (the
// server connection failed): no more answers will come.
func (ss *session) serverGoneLocked() bool {
	select {
	case <-ss.serverDone:
		return true
	default:
		return false
	}
}

// awaitingLocked reports whether the server still owes answers it will
// send without further input: those up to the last Sync, Query or
// FunctionCall (Postgres does not flush the answers to a batch that was
// never synced), and none while it waits for COPY data.
func (ss *session) awaitingLocked() bool {
	if ss.checking != nil {
		return true
	}
	if ss.copyIn {
		return false
	}
	for i := range ss.replies {
		if r := &ss.replies[i]; r.fromServer() && (r.msg == 'S' || r.msg == 'Q' || r.msg == 'F') {
			return true
		}
	}
	return false
}

// handle plans what one client message becomes (messages to the server,
// entries in the reply queue, answers kproxy makes up), attaching a server
// connection first if needed, and writes it out. It returns false when the
// session must end.
func (ss *session) handle(t byte, msg []byte) bool {
	if ss.srv.paused.Load() {
		// PAUSE holds new transactions back, not those under way.
		ss.mu.Lock()
		attached := ss.server != nil
		ss.mu.Unlock()
		if !attached {
			ss.srv.waitUnpaused(ss.database)
		}
	}
	ss.mu.Lock()
	flushed := false
	for {
		for ss.checking != nil {
			ch := ss.checking
			ss.mu.Unlock()
			<-ch
			ss.mu.Lock()
		}
		if !ss.writeBehindReplicaReadsLocked(t, msg) && !ss.readsOwedRebindLocked(t, msg) {
			break
		}
		// A write pipelined behind reads running on a replica: once the
		// replica has answered them, the write is routed afresh. A
		// message that uses a statement an earlier synced batch still
		// running redefines waits for that batch: if it fails, the
		// statement is what it was before, as on Postgres. What was sent
		// without a flush (more was coming) goes out first.
		ss.startPendingRelay(ss.server) // the replica's answers must flow now
		if !flushed {
			flushed = true
			if !ss.flushServerLocked() {
				return false
			}
			continue
		}
		ss.changed.Wait()
	}
	return ss.dispatchLocked(t, msg, !ss.rd.HasFrame())
}

// sqlOfLocked returns the statement text a Query, Parse or Bind runs, ""
// when unknown.
func (ss *session) sqlOfLocked(t byte, msg []byte) string {
	body := msg[5:]
	var parse []byte
	switch t {
	case 'Q':
		return cstring(body)
	case 'P':
		parse = msg
	case 'B':
		name, _, _, ok := bindStatement(body)
		switch {
		case !ok:
		case len(name) == 0:
			if u := ss.unnamed; u != nil {
				return string(u.clientText())
			}
		default:
			if cs := ss.stmts[string(name)]; cs != nil {
				return string(cs.clientText())
			}
		}
	}
	if len(parse) > 5 {
		if _, query, _, ok := splitParse(parse[5:]); ok {
			return string(query)
		}
	}
	return ""
}

// flushServerLocked flushes what was written to the attached server
// connection. It unlocks mu while it writes, and returns false (mu
// unlocked) when the session must end.
func (ss *session) flushServerLocked() bool {
	sc := ss.server
	ss.writing = true
	ss.mu.Unlock()
	if !ss.endWrite(sc.Flush()) {
		return false
	}
	ss.mu.Lock()
	return true
}

// endWrite ends a write to the server connection that began with writing
// set, and reports whether the session goes on. The answer may have come
// back, and the connection been detached, before the write returned; the
// release then waited for it. mu must not be held.
func (ss *session) endWrite(err error) bool {
	ss.mu.Lock()
	ss.writing = false
	ss.changed.Broadcast()
	rel := ss.releaseAfterWrite
	ss.releaseAfterWrite = nil
	ss.mu.Unlock()
	if rel != nil {
		rel.Release()
	}
	if err != nil {
		ss.fail(&Error{Severity: severityFatal, Code: codeConnectionFailure, Message: "lost connection to the server", Err: err})
		return false
	}
	return true
}

// readsOwedRebindLocked reports whether client message t uses a
// statement (by name, or the unnamed one) that a batch before the last
// Sync, whose answer has not come, redefines (Parse, Close, DEALLOCATE).
// kproxy planned that batch assuming it works; if it fails, Postgres
// keeps the statement as it was, which the message must then see.
func (ss *session) readsOwedRebindLocked(t byte, msg []byte) bool {
	if ss.mode != config.PoolModeTransaction || len(ss.replies) == 0 || ss.server == nil || ss.serverGoneLocked() {
		return false
	}
	body := msg[5:]
	var name string
	all := false
	switch t {
	case 'B':
		n, _, _, ok := bindStatement(body)
		if !ok {
			return false
		}
		name = string(n)
	case 'D':
		if len(body) < 2 || body[0] != 'S' {
			return false
		}
		name = cstring(body[1:])
	case 'P':
		n, _, _, ok := splitParse(body)
		if !ok || len(n) == 0 {
			return false // an unnamed Parse replaces the statement, whatever it was
		}
		name = string(n)
	case 'Q':
		all = true // DEALLOCATE
	default:
		return false
	}
	last := -1
	for i := range ss.replies {
		if r := &ss.replies[i]; r.fromServer() && r.msg == 'S' {
			last = i
		}
	}
	for i := 0; i < last; i++ {
		r := &ss.replies[i]
		switch {
		case name == "" && !all:
			// The client's unnamed statement, or kproxy's Parse of it on
			// the server (ensureUnnamedLocked), which the server skips if
			// that batch fails.
			if r.setsUnnamed || r.fromServer() && r.msg == 'P' && r.stmt == "" && !r.scratch {
				return true
			}
		case r.savedAll != nil:
			return true
		case r.client != name && !all:
		case r.kind == replyCloseComplete, r.kind == replyFrame && r.client != "",
			r.kind == replyParseComplete && r.client != "", r.kind == replyForward && r.msg == 'P':
			return true
		}
	}
	return false
}

// writeBehindReplicaReadsLocked reports whether t starts a transaction
// that writes while the attached replica still owes answers to earlier
// reads outside any transaction.
func (ss *session) writeBehindReplicaReadsLocked(t byte, msg []byte) bool {
	if !ss.routing || ss.server == nil || !ss.target.Replica() || len(ss.replies) == 0 || ss.inBatch ||
		ss.txStatus != pgwire.TxIdle || ss.serverGoneLocked() {
		return false
	}
	switch t {
	case 'Q':
		return !ss.classifyReadOnlyLocked(cstring(msg[5:]))
	case 'P':
		_, query, _, ok := splitParse(msg[5:])
		return ok && !ss.classifyReadOnlyLocked(string(query))
	}
	return false
}

// dispatchLocked does handle's work for one message once the session may
// take it. It unlocks mu. flush says no further client message is waiting.
func (ss *session) dispatchLocked(t byte, msg []byte, flush bool) bool {
	if ss.skipping && t != 'S' {
		sc := ss.server
		ss.mu.Unlock()
		ss.settleRelay(sc, flush, true, false, 0)
		return true
	}
	sc := ss.server
	if sc == nil {
		if out, flushNow, done := ss.withoutServerLocked(t, msg); done {
			ss.mu.Unlock()
			return ss.writeClient(out, flushNow || flush) == nil
		}
		readOnly := ss.routing && ss.readOnlyLocked(t, msg)
		minLSN := ss.minLSN
		ss.mu.Unlock()
		target, err := ss.srv.cluster.Route(ss.database, ss.user, readOnly, minLSN)
		if err == nil {
			sc, err = ss.acquire(target.Pool)
			if err != nil && target.Replica() && err != errCancelledWaiting {
				// The replica is down or busy: read on the primary. Only a
				// failure to connect counts against the replica's health.
				failed := err
				if errors.Is(err, pool.ErrAcquireTimeout) {
					failed = nil
				}
				target.Done(ss.srv.cluster, failed)
				ss.logger().Info("no replica connection; reading on the primary", zap.Error(err))
				target, err = ss.srv.cluster.Route(ss.database, ss.user, false, 0)
				if err == nil {
					sc, err = ss.acquire(target.Pool)
				}
			} else if err == errCancelledWaiting {
				target.Done(ss.srv.cluster, nil) // not the server's failure
			} else if err != nil {
				target.Done(ss.srv.cluster, err)
			} else if !ss.replayed(target, sc) {
				// The replica has not caught up with the client's last
				// write: read on the primary.
				sc.Release()
				target.Done(ss.srv.cluster, nil)
				target, err = ss.srv.cluster.Route(ss.database, ss.user, false, 0)
				if err == nil {
					sc, err = ss.acquire(target.Pool)
				}
			}
		}
		if err != nil {
			return ss.attachFailed(t, err)
		}
		if ce := ss.srv.log.Check(zap.DebugLevel, "transaction routed"); ce != nil {
			ce.Write(zap.String("user", ss.user), zap.String("database", ss.database),
				zap.Bool("read_only", readOnly), zap.Bool("replica", target.Replica()),
				zap.Stringer("min_lsn", minLSN), zap.Uint32("server_pid", sc.PID()))
		}
		var sent int64
		if target.Replica() { // only a replica's transaction may be replayed
			ss.wmu.Lock()
			sent = ss.sent.n
			ss.wmu.Unlock()
		}
		ss.mu.Lock()
		ss.attachForLocked(sc, target, sent, t, msg)
	}
	if t == 'S' {
		ss.skipping = false
	}
	if err := ss.planLocked(sc, t, msg); err != nil {
		ss.mu.Unlock()
		ss.settleRelay(sc, true, false, false, 0)
		ss.fail(err)
		return false
	}
	answer := ss.pendingRelay != nil && len(ss.toServer) > 0 && ss.awaitingLocked()
	if ss.replayOK {
		if len(ss.replayLog)+len(msg) > maxReplayBytes {
			ss.replayOK = false
			ss.replayLog = nil
		} else {
			ss.replayLog = append(ss.replayLog, msg...)
		}
	}
	toServer, toClient := ss.toServer, ss.toClient
	ss.writing = len(toServer) > 0 || flush
	// At a Flush, answers kproxy made up earlier in the batch go out too:
	// the server may owe nothing, and then no relay write flushes them.
	toClientNow := len(toClient) > 0 || (t == 'H' && flush)
	if toClientNow {
		ss.wmu.Lock() // before unlocking mu: keeps answers in queue order
	}
	ss.mu.Unlock()

	var cerr error
	if toClientNow {
		if len(toClient) > 0 {
			_, cerr = ss.w.Write(toClient)
		}
		if cerr == nil && flush {
			cerr = ss.w.Flush()
		}
		ss.wmu.Unlock()
	}
	var err error
	if len(toServer) > 0 {
		err = sc.Write(toServer)
	}
	if err == nil && flush {
		err = sc.Flush()
	}
	ss.toServer, ss.toClient = toServer[:0], toClient[:0]
	ok := ss.endWrite(err) && cerr == nil
	ss.settleRelay(sc, flush, ok, answer, len(toServer))
	return ok
}

// withoutServerLocked handles client message t when no server connection
// is attached and none is needed: copy messages outside COPY (ignored, as
// Postgres does), Flush, a Sync that ends a batch that never needed a
// server, and what answerLocallyLocked answers. It reports whether it did,
// what to send the client, and whether to flush it now.
func (ss *session) withoutServerLocked(t byte, msg []byte) (out []byte, flushNow, done bool) {
	switch t {
	case 'd', 'c', 'f':
		return nil, false, true
	case 'H': // what kproxy answered itself goes out now
		return nil, true, true
	case 'S':
		ss.skipping = false
		ss.inBatch = false
		return pgwire.ReadyForQuery(ss.txStatus), true, true
	}
	out, ok := ss.answerLocallyLocked(t, msg)
	return out, false, ok
}

// attachForLocked makes sc, taken from target for client message t, the
// session's server connection, with the transaction's routing and replay
// state; sent is the client byte count then (for a replay). The relay
// starts once the client's batch is written (see settleRelay), so that
// what it reads first (an error the server sent before this transaction
// began, such as 57P01 on a connection terminated while idle) finds that
// state set.
func (ss *session) attachForLocked(sc *pool.Conn, target pool.Target, sent int64, t byte, msg []byte) {
	ss.pendingRelay = ss.attachLocked(sc)
	ss.pendingBytes = 0
	ss.target = target
	// A transaction replayed on the primary is there because it writes.
	ss.wrote = ss.forcePrimary
	ss.replayOK = target.Replica()
	ss.replayLog = ss.replayLog[:0]
	ss.sentAtAttach = sent
	if ss.mode == config.PoolModeTransaction {
		// Statements no client holds any more leave the server first.
		for _, name := range sc.TakeGarbage() {
			ss.closeOnServerLocked(name)
		}
	}
	if sc.Learning() {
		if sql := ss.sqlOfLocked(t, msg); sql != "" {
			sc.NoteStatement(ss.srv.classifier.Classify(sql).Fingerprint, sql)
		}
	}
}

// maxPendingRelayBytes bounds what the client goroutine writes to a server
// connection before its relay starts: well under a socket buffer, so that
// a server that stops reading because nobody reads its answers cannot
// block the write.
const maxPendingRelayBytes = 32 << 10

// settleRelay decides, after a client message is written to sc, what
// becomes of a relay the session has not started (pendingRelay). When the
// client has sent everything it had (flush) and the server owes an answer
// (answer), this goroutine relays it (relayInline). When the client waits
// for something else, the session ends (not ok) or the batch grows past
// maxPendingRelayBytes, a server goroutine starts. Otherwise the client's
// next message is already here and the relay waits for it. Only the client
// goroutine calls it; mu must not be held.
func (ss *session) settleRelay(sc *pool.Conn, flush, ok, answer bool, wrote int) {
	done := ss.pendingRelay
	if done == nil {
		return
	}
	ss.pendingBytes += wrote
	switch {
	case ok && flush && answer:
		ss.pendingRelay = nil
		ss.relayInline(sc, done)
	case !ok || flush || ss.pendingBytes > maxPendingRelayBytes:
		ss.startPendingRelay(sc)
	}
}

// startPendingRelay starts the relay of sc, the attached connection, that
// settleRelay left waiting, if any: before anything waits on it or the
// session ends. Only the client goroutine calls it.
func (ss *session) startPendingRelay(sc *pool.Conn) {
	if done := ss.pendingRelay; done != nil {
		ss.pendingRelay = nil
		ss.startRelay(sc, done)
	}
}

// answerLocallyLocked answers, without a server connection, a client's
// Close of a named statement (its server statements stay for others) and
// a Parse of a named statement the pool has prepared without error in the
// current schema generation (Server.schemaGen). That Parse is prepared
// afresh where the statement first runs: drivers that prepare
// synchronously (pgbench -M prepared, for one) would otherwise need a free
// server connection just for it, and with one thread for many clients
// wait for it while those clients hold every connection. Any other Parse
// goes to a server, since only the server can say what the text means
// under the current schema.
func (ss *session) answerLocallyLocked(t byte, msg []byte) ([]byte, bool) {
	if ss.mode != config.PoolModeTransaction {
		return nil, false
	}
	body := msg[5:]
	if t == 'P' {
		name, query, types, ok := splitParse(body)
		if !ok || len(name) == 0 {
			return nil, false
		}
		if _, dup := ss.stmts[string(name)]; dup {
			return nil, false
		}
		cs := newClientStmt(query, types, ss.settings["search_path"])
		gen := ss.srv.schemaGen.Load()
		known, ok := ss.pool.KnownStmt(cs.key, gen)
		if !ok {
			return nil, false
		}
		scan := classify.ScanSessionCalls(string(query), nil)
		if scan.Schema || scan.RunsCode || scan.Deallocate != "" || scan.DeallocateAll || scan.PreparedStatementsView {
			return nil, false // the server and planLocked see to these
		}
		ss.inBatch = true
		_, cs.effect = ss.noteSQLLocked(string(query))
		if ss.routing {
			cs.readOnly = ss.classifyReadOnlyLocked(string(query))
		}
		cs.client = string(name)
		// Its description is fixed now, as Postgres fixes it at Parse.
		cs.shape, cs.fixed, cs.rows = known.Shape, known.Fixed, known.Rows
		cs.provisional, cs.ackGen = true, gen
		ss.pool.RefStmt(cs.id())
		ss.stmts[string(name)] = cs
		return []byte{'1', 0, 0, 0, 4}, true
	}
	if t != 'C' || len(body) < 2 || body[0] != 'S' || body[1] == 0 {
		return nil, false
	}
	ss.inBatch = true
	ss.dropStmtLocked(cstring(body[1:]))
	return []byte{'3', 0, 0, 0, 4}, true
}

// dropStmtLocked forgets the client's statement name, if any, and returns
// it.
func (ss *session) dropStmtLocked(name string) *clientStmt {
	cs := ss.stmts[name]
	if cs == nil {
		return nil
	}
	delete(ss.stmts, name)
	ss.releaseStmt(cs)
	return cs
}

// releaseStmt lets go of the pool's reference to cs's statements.
func (ss *session) releaseStmt(cs *clientStmt) {
	if cs.shape == 0 {
		cs.closed = true
		return
	}
	ss.pool.UnrefStmt(cs.id())
}

// restoreStmtLocked gives the client back statement cs under name, after
// the batch that closed it failed.
func (ss *session) restoreStmtLocked(name string, cs *clientStmt) {
	ss.stmts[name] = cs
	cs.closed = false
	ss.pool.RefStmt(cs.id())
}

// planLocked turns client message t into ss.toServer, ss.toClient and reply
// queue entries. In transaction mode it maps the client's named statements
// to server statements, preparing them on sc when sc lacks them.
func (ss *session) planLocked(sc *pool.Conn, t byte, msg []byte) error {
	tx := ss.mode == config.PoolModeTransaction
	body := msg[5:]
	if u := ss.describeUnnamed; u != nil {
		// The unnamed Parse before this message is described right after
		// it, as it stood then, unless the client does so itself: a later
		// batch may bind it on another connection, after the schema
		// changed, and its shape tells whether it still holds.
		ss.describeUnnamed = nil
		if t != 'D' || len(body) < 2 || body[0] != 'S' || body[1] != 0 {
			ss.toServer = describeStmtFrame(ss.toServer, "")
			ss.replies = append(ss.replies, reply{kind: replySwallow, msg: 'D', cs: u})
		}
	}
	switch t {
	case 'P':
		ss.inBatch = true
		name, query, types, ok := splitParse(body)
		if !ok {
			return fatalf(codeProtocolViolation, "invalid Parse message")
		}
		ro := false
		var eff stmtEffect
		var scan classify.Session
		if tx {
			scan, eff = ss.noteSQLLocked(string(query))
			ro = ss.noteRouteLocked(string(query))
		}
		if !tx {
			ss.send(msg, reply{kind: replyForward, msg: 'P'})
			return nil
		}
		if len(name) == 0 {
			u := newUnnamedStmt(query, types)
			u.readOnly, u.effect = ro, eff
			r := reply{kind: replyForward, msg: 'P', setsUnnamed: true, prevUnnamed: ss.unnamed}
			ss.unnamed = u
			if u.local = ss.localDeallocateLocked(scan); u.local != nil {
				// The server must not run it: its statements are not the
				// client's names, and other clients' share them.
				r.kind = replyParseComplete
				ss.enqueueLocked(r)
				return nil
			}
			sc.SetUnnamedOwner(u)
			if scan.PreparedStatementsView {
				ss.readsPreparedViewLocked(u)
				msg = parseFrame(nil, "", u.query, types)
			}
			ss.send(msg, r)
			ss.describeUnnamed = u
			return nil
		}
		n := string(name)
		if _, dup := ss.stmts[n]; dup {
			// Postgres checks the name last: the text's own errors, and
			// 25P02 in a failed transaction, come first. The server
			// parses it as its unnamed statement, which kproxy re-creates
			// for the client when it is next used.
			ss.send(parseFrame(nil, "", query, types), reply{kind: replySwallow, msg: 'P'})
			sc.SetUnnamedOwner(nil)
			ss.failLocked(&Error{Severity: severityError, Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", n)})
			return nil
		}
		cs := newClientStmt(query, types, ss.settings["search_path"])
		cs.readOnly = ro
		cs.effect = eff
		cs.client = n
		ss.stmts[n] = cs
		if scan.PreparedStatementsView {
			ss.readsPreparedViewLocked(cs)
		}
		if cs.local = ss.localDeallocateLocked(scan); cs.local != nil {
			ss.enqueueLocked(reply{kind: replyParseComplete, client: n})
			return nil
		}
		ss.prepareLocked(sc, cs, cs.types, reply{kind: replyForward, msg: 'P', client: n})
	case 'B':
		ss.inBatch = true
		name, start, end, ok := bindStatement(body)
		if !ok {
			return fatalf(codeProtocolViolation, "invalid Bind message")
		}
		if tx {
			ss.mayEndTx = true
			// A DEALLOCATE kproxy runs itself is bound without the server.
			cs := ss.unnamed
			if len(name) > 0 {
				cs = ss.stmts[string(name)]
			}
			var local *localDeallocate
			if cs != nil {
				local = cs.local
			}
			portal := cstring(body)
			if local != nil || portal == ss.portalLocalName {
				ss.portalLocal, ss.portalLocalName = local, portal
			}
			if local != nil && ss.txStatus == 'E' {
				ss.failLocked(errFailedTransaction)
				return nil
			}
			if local != nil {
				ss.lastBound = ""
				ss.enqueueLocked(reply{kind: replyFrame, frame: []byte{'2', 0, 0, 0, 4}})
				return nil
			}
		}
		if !tx || len(name) == 0 {
			ss.lastBound = ""
			if tx && !ss.ensureUnnamedLocked(sc, body) {
				return nil
			}
			if tx {
				ss.markLocked(ss.unnamed.effect)
			}
			ss.send(msg, reply{kind: replyForward, msg: 'B'})
			return nil
		}
		server, ok := ss.serverStmtLocked(sc, string(name), body)
		if !ok {
			return nil
		}
		ss.toServer = replaceRange(ss.toServer, 'B', body, start, end, server)
		ss.replies = append(ss.replies, reply{kind: replyForward, msg: 'B', stmt: server, client: ss.stmts[string(name)].client})
		ss.lastBound = server
	case 'D', 'C':
		ss.inBatch = true
		if tx && t == 'D' && len(body) >= 2 {
			n := cstring(body[1:])
			switch {
			case body[0] == 'S' && (n == "" && ss.unnamed != nil && ss.unnamed.local != nil || n != "" && ss.stmts[n] != nil && ss.stmts[n].local != nil):
				// No parameters, no rows.
				ss.enqueueLocked(reply{kind: replyFrame, frame: []byte{'t', 0, 0, 0, 6, 0, 0, 'n', 0, 0, 0, 4}})
				return nil
			case body[0] == 'P' && ss.portalLocal != nil && n == ss.portalLocalName:
				ss.enqueueLocked(reply{kind: replyFrame, frame: []byte{'n', 0, 0, 0, 4}})
				return nil
			}
		}
		if !tx || len(body) < 2 || body[0] != 'S' || body[1] == 0 {
			if tx && t == 'C' && len(body) >= 2 && body[0] == 'S' {
				// The client's unnamed statement goes; the server's, on
				// this connection, was the client's or goes too.
				ss.send(msg, reply{kind: replyForward, msg: t, setsUnnamed: true, prevUnnamed: ss.unnamed})
				ss.unnamed = nil
				sc.SetUnnamedOwner(nil)
				return nil
			}
			r := reply{kind: replyForward, msg: t}
			if tx && t == 'D' && len(body) >= 2 && body[0] == 'S' {
				u := ss.unnamed
				if u != nil && sc.UnnamedOwner() != any(u) && ss.describeFromCacheLocked(u) {
					return nil
				}
				if !ss.ensureUnnamedLocked(sc, nil) {
					return nil
				}
				r.cs = u // its answer gives the statement's shape
			}
			ss.send(msg, r)
			return nil
		}
		n := cstring(body[1:])
		if t == 'C' {
			saved := ss.dropStmtLocked(n)
			ss.enqueueLocked(reply{kind: replyCloseComplete, client: n, saved: saved})
			return nil
		}
		if cs := ss.stmts[n]; cs != nil && !(cs.sc == sc && sc.HasStmt(cs.name)) && ss.describeFromCacheLocked(cs) {
			return nil
		}
		server, ok := ss.serverStmtLocked(sc, n, nil)
		if !ok {
			return nil
		}
		ss.toServer = replaceRange(ss.toServer, 'D', body, 1, 1+len(n), server)
		ss.replies = append(ss.replies, reply{kind: replyForward, msg: 'D', stmt: server, client: ss.stmts[n].client})
	case 'E':
		ss.inBatch = true
		if tx && ss.portalLocal != nil && cstring(body) == ss.portalLocalName {
			ss.snapshotLocked(sc)
			ss.deallocateLocked(ss.portalLocal)
			return nil
		}
		ss.send(msg, reply{kind: replyForward, msg: 'E', stmt: ss.lastBound})
	case 'S':
		if ss.copyIn { // ignored by the server
			ss.toServer = append(ss.toServer, msg...)
			return nil
		}
		ss.inBatch = false
		ss.send(msg, reply{kind: replyForward, msg: 'S'})
	case 'c', 'f':
		ss.copyIn = false
		ss.toServer = append(ss.toServer, msg...)
	case 'Q':
		r := reply{kind: replyForward, msg: 'Q'}
		if tx {
			ss.mayEndTx = true
			// A simple Query destroys the unnamed statement.
			r.setsUnnamed, r.prevUnnamed = true, ss.unnamed
			ss.unnamed = nil
			if ss.portalLocalName == "" {
				ss.portalLocal = nil
			}
			sc.SetUnnamedOwner(nil)
			text := cstring(body)
			scan, _ := ss.noteSQLLocked(text)
			ss.noteRouteLocked(text)
			if scan.PreparedStatementsView {
				msg = append([]byte{'Q', 0, 0, 0, 0}, rewritePreparedView(text, ss.preparedRowsLocked())...)
				msg = append(msg, 0)
				binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-1))
			}
			if d := ss.localDeallocateLocked(scan); d != nil {
				// kproxy answers the DEALLOCATE, and a Sync the
				// ReadyForQuery: the server answers what kproxy sent it
				// itself (Closes at attach), gives the transaction status,
				// and the safe point comes as for any Query. Like any
				// Query, it ends the unnamed portal.
				ss.snapshotLocked(sc)
				ss.deallocateLocked(d)
				ss.send([]byte{'C', 0, 0, 0, 6, 'P', 0}, reply{kind: replySwallow, msg: 'C'})
				ss.send([]byte{'S', 0, 0, 0, 4}, reply{kind: replyForward, msg: 'S'})
				return nil
			}
			if scan.DropsAllStatements {
				r.savedAll = make(map[string]*clientStmt, len(ss.stmts))
				for n, cs := range ss.stmts {
					r.savedAll[n] = cs
				}
				ss.dropAllStmtsLocked()
				r.dropsAll = true
			}
		}
		ss.send(msg, r)
	case 'F':
		ss.mayEndTx = true
		ss.send(msg, reply{kind: replyForward, msg: 'F'})
	default: // Flush and copy messages are not answered on their own
		ss.toServer = append(ss.toServer, msg...)
	}
	return nil
}

// localDeallocate is a DEALLOCATE of protocol-level statements, which
// kproxy runs itself: on the server the names are kproxy's, and other
// clients share the statements. name is the client's statement name, or
// all is set for DEALLOCATE ALL.
type localDeallocate struct {
	name string
	all  bool
}

// localDeallocateLocked returns the DEALLOCATE scan found if kproxy runs
// it: DEALLOCATE ALL, or of one of the client's statements, outside a
// failed transaction. That of a name the client does not have goes to the
// server, which fails it as Postgres does.
func (ss *session) localDeallocateLocked(scan classify.Session) *localDeallocate {
	switch {
	case ss.txStatus == 'E':
		return nil // the server fails it, as Postgres does in a failed transaction
	case scan.DeallocateAll:
		return &localDeallocate{all: true}
	case scan.Deallocate != "" && ss.stmts[scan.Deallocate] != nil:
		return &localDeallocate{name: scan.Deallocate}
	}
	return nil
}

// snapshotLocked does what running a DEALLOCATE kproxy answers itself
// would have done on the server: in a transaction block, the first
// statement takes the transaction's snapshot, after which SET TRANSACTION
// and BEGIN ISOLATION LEVEL are refused. A Parse of an empty SELECT takes
// it; it replaces the server's unnamed statement.
func (ss *session) snapshotLocked(sc *pool.Conn) {
	if ss.txStatus != pgwire.TxActive {
		return
	}
	ss.send(parseFrame(nil, "", []byte("SELECT"), []byte{0, 0}), reply{kind: replySwallow, msg: 'P'})
	sc.SetUnnamedOwner(nil)
}

// deallocateLocked runs d: it drops the client statements d names and
// queues the made-up CommandComplete, which gives them back if its batch
// fails. A statement closed since d was
// prepared is reported missing, as Postgres does.
func (ss *session) deallocateLocked(d *localDeallocate) {
	r := reply{kind: replyFrame}
	tag := "DEALLOCATE"
	switch {
	case d.all:
		tag = "DEALLOCATE ALL"
		r.savedAll = make(map[string]*clientStmt, len(ss.stmts))
		for n, cs := range ss.stmts {
			r.savedAll[n] = cs
		}
		ss.dropAllStmtsLocked()
	case ss.stmts[d.name] != nil:
		r.client, r.saved = d.name, ss.dropStmtLocked(d.name)
	default:
		ss.failLocked(&Error{Severity: severityError, Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", d.name)})
		return
	}
	r.frame, _ = (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(nil)
	ss.enqueueLocked(r)
}

func (ss *session) send(msg []byte, r reply) {
	ss.toServer = append(ss.toServer, msg...)
	ss.replies = append(ss.replies, r)
}

// ensureUnnamedLocked makes sure sc's unnamed statement is the client's
// latest, for a Bind or Describe of it, and reports whether the batch goes
// on. A driver may Bind the unnamed statement of an earlier batch, which
// ran on another server connection: kproxy prepares it again on sc, and
// when its shape is known checks it as serverStmtLocked does a named one.
// A client with no unnamed statement gets Postgres' error (whatever
// unnamed statement the server has is not the client's).
func (ss *session) ensureUnnamedLocked(sc *pool.Conn, bind []byte) bool {
	u := ss.unnamed
	if u == nil {
		ss.failLocked(errNoUnnamedStmt)
		return false
	}
	if u.view != nil && ss.refreshViewLocked(u) && sc.UnnamedOwner() == any(u) {
		sc.SetUnnamedOwner(nil) // prepared again with the rows as they are now
	}
	if sc.UnnamedOwner() == any(u) {
		return true
	}
	if ss.bindRefusedLocked(bind, u, "") {
		return false
	}
	portal := ss.checkValuesLocked(bind, u)
	r := reply{kind: replySwallow, msg: 'P'}
	if bind == nil && u.rows && u.shape != 0 {
		r.errPrefix = paramDescFrame(u.fixed)
	}
	ss.toServer = parseFrame(ss.toServer, "", u.query, u.paramTypes())
	ss.replies = append(ss.replies, r)
	sc.SetUnnamedOwner(u)
	if u.shape == 0 || !verifyShapes {
		return true
	}
	ss.toServer = describeStmtFrame(ss.toServer, "")
	ss.replies = append(ss.replies, reply{kind: replySwallow, msg: 'D', cs: u, verify: true})
	if !ss.verifyLocked(sc, u, bind) {
		return false
	}
	ss.closePortalLocked(portal)
	return true
}

// describeFromCacheLocked answers a Describe of client statement cs,
// which sc does not have, from what kproxy learned of it, and reports
// whether it did. Postgres describes a statement that returns no rows
// from what it stored at its Parse, whatever happened to the objects it
// names since (also when kproxy acknowledged the Parse itself, with the
// shape the pool knew then: provisional); one that returns rows is checked
// against the schema first (by preparing it on sc, see serverStmtLocked),
// and refused in a failed transaction (25P02), where the server would
// refuse to prepare it. While cs's shape is unknown or provisional, or once
// the batch may have ended the failed transaction, the server decides
// about one that returns rows.
func (ss *session) describeFromCacheLocked(cs *clientStmt) bool {
	switch {
	case cs.shape == 0:
		return false
	case cs.rows && (cs.provisional || ss.txStatus != 'E' || ss.mayEndTx):
		return false
	case cs.rows:
		ss.failLocked(errFailedTransaction)
		return true
	}
	ss.enqueueLocked(reply{kind: replyFrame, frame: append(paramDescFrame(cs.fixed), 'n', 0, 0, 0, 4)})
	return true
}

// paramDescFrame returns a ParameterDescription message of body fixed.
func paramDescFrame(fixed []byte) []byte {
	frame := append([]byte{'t'}, binary.BigEndian.AppendUint32(nil, uint32(4+len(fixed)))...)
	return append(frame, fixed...)
}

// dropAllStmtsLocked forgets every statement of the client (DEALLOCATE
// ALL, DISCARD ALL, the end of the session).
func (ss *session) dropAllStmtsLocked() {
	for n, cs := range ss.stmts {
		delete(ss.stmts, n)
		ss.releaseStmt(cs)
	}
}

// serverStmtLocked returns the server statement on sc that stands for the
// client's statement name, preparing one when sc has none, or reports at
// this point of the batch that it does not exist (ok false).
//
// A statement sc already has is used only if it was prepared for this
// client statement or has its shape (see pool's stmt.go). Otherwise it is
// prepared with the parameter types the server inferred at the client's
// Parse, and described: when the server now gives it another shape, the
// schema changed under the client's statement, and the client gets the
// error Postgres gives then (0A000) before anything of the batch runs.
func (ss *session) serverStmtLocked(sc *pool.Conn, name string, bind []byte) (server string, ok bool) {
	cs := ss.stmts[name]
	if cs == nil {
		ss.failLocked(&Error{Severity: severityError, Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", name)})
		return "", false
	}
	ss.markLocked(cs.effect)
	if cs.view != nil {
		ss.refreshViewLocked(cs)
	}
	if cs.sc == sc && sc.HasStmt(cs.name) {
		return cs.name, true
	}
	if cs.shape != 0 {
		if n, found := sc.LookupStmt(cs.id()); found {
			cs.sc, cs.name = sc, n
			return n, true
		}
		if ss.bindRefusedLocked(bind, cs, name) {
			return "", false
		}
		portal := ss.checkValuesLocked(bind, cs)
		r := reply{kind: replySwallow, msg: 'P'}
		if bind == nil && cs.rows {
			r.errPrefix = paramDescFrame(cs.fixed)
		}
		ss.prepareLocked(sc, cs, cs.paramTypes(), r)
		if verifyShapes && !ss.verifyLocked(sc, cs, bind) {
			return "", false
		}
		ss.closePortalLocked(portal)
		return cs.name, true
	}
	// Its shape is unknown (the Describe after its Parse failed): prepare
	// it as the client did.
	ss.prepareLocked(sc, cs, cs.types, reply{kind: replySwallow, msg: 'P'})
	return cs.name, true
}

// prepareLocked sends a Parse of cs with paramTypes to sc under a new
// server name, with r as its reply, and a Describe that learns or, for a
// statement whose shape is known, checks its shape. Statements the Parse
// pushes out of sc's set are closed first.
func (ss *session) prepareLocked(sc *pool.Conn, cs *clientStmt, paramTypes []byte, r reply) {
	name, evicted := sc.NewStmt(cs.key)
	for _, old := range evicted {
		ss.closeOnServerLocked(old)
	}
	cs.sc, cs.name = sc, name
	r.stmt, r.cs, r.gen = name, cs, ss.srv.schemaGen.Load()
	ss.toServer = parseFrame(ss.toServer, name, cs.query, paramTypes)
	ss.replies = append(ss.replies, r)
	ss.toServer = describeStmtFrame(ss.toServer, name)
	ss.replies = append(ss.replies, reply{kind: replySwallow, msg: 'D', stmt: name, cs: cs, verify: cs.shape != 0, gen: r.gen})
}

// shapedLocked handles the end (t, msg) of the answer to a Describe that
// learns or checks the shape of client statement r.cs; the parameter types
// came before, in descParams.
func (ss *session) shapedLocked(sc *pool.Conn, r *reply, t byte, msg []byte) {
	var rows []byte
	if t == 'T' {
		rows = msg[5:]
	}
	shape := shapeOf(ss.descParams, rows)
	cs := r.cs
	if !cs.unnamed {
		sc.StmtShaped(r.stmt, shape)
	}
	switch {
	case r.verify:
		ok := shape == cs.shape
		if !ok {
			if cs.provisional && ss.srv.schemaGen.Load() == cs.ackGen && !ss.dirtySettings && ss.settings["search_path"] == cs.path {
				// No DDL went through kproxy since it acknowledged the
				// client's Parse, and the client's search_path is the
				// one it parsed under: the change came from elsewhere,
				// and is taken to have come before that Parse, which
				// takes the statement as the server now parses it.
				// (After DDL through kproxy, the change came after it;
				// under another search_path Postgres analyses the
				// statement again, and finds it changed: either way the
				// client gets 0A000 as from Postgres.)
				ss.reidentifyLocked(cs, func() {
					cs.shape, cs.rows, cs.fixed = shape, rows != nil, bytes.Clone(ss.descParams)
				})
				ok = true
			}
			ss.srv.schemaGen.Add(1) // what the pool knows of texts is stale
		}
		if ok {
			cs.provisional = false
		}
		ss.verifyOK = ok
		ss.verifyWait = false
		ss.changed.Broadcast()
	case cs.shape == 0:
		cs.shape = shape
		cs.rows = rows != nil
		cs.fixed = bytes.Clone(ss.descParams)
		if !cs.unnamed {
			ss.pool.RefStmt(cs.id())
			if cs.closed {
				ss.pool.UnrefStmt(cs.id())
			}
		}
	}
	if !cs.unnamed && r.stmt != "" && (!r.verify || ss.verifyOK) {
		ss.pool.AddKnownStmt(cs.key, pool.KnownShape{Gen: r.gen, Shape: shape, Fixed: cs.fixed, Rows: rows != nil})
	}
}

// reidentifyLocked runs change, which changes the key or shape of client
// statement cs, moving the pool's reference to cs's statements, if the
// client holds cs, from its old identity to its new one.
func (ss *session) reidentifyLocked(cs *clientStmt, change func()) {
	held := cs.shape != 0 && ss.stmts[cs.client] == cs
	if held {
		ss.pool.UnrefStmt(cs.id())
	}
	change()
	if held {
		ss.pool.RefStmt(cs.id())
	}
}

// verifyLocked sends what the batch holds so far, ending with the Parse
// and Describe prepareLocked queued for cs on sc, and waits for the
// server's answer. It reports whether the batch goes on: the statement has
// the shape the client knows. When it does not, the client gets 0A000 at
// this point, as from Postgres, and the server fails the rest of the batch
// too, so that nothing of it runs. Postgres makes some checks before it
// looks at the schema, and their errors come first: for a Describe (bind
// nil) it sends the parameter types; for a Bind the server made them
// before the Parse (checkValuesLocked), and left the portal as Postgres
// leaves it then, created but not defined. It unlocks mu while it waits.
func (ss *session) verifyLocked(sc *pool.Conn, cs *clientStmt, bind []byte) bool {
	if !ss.awaitServerLocked(sc) {
		return false
	}
	if ss.verifyOK {
		return true
	}
	cs.sc, cs.name = nil, "" // the statement just prepared has the new shape: not the client's
	if cs.unnamed {
		sc.SetUnnamedOwner(nil) // it fails again next time, as on Postgres
	}
	if bind == nil {
		ss.enqueueLocked(reply{kind: replyFrame, frame: paramDescFrame(cs.fixed)})
	}
	ss.failLocked(&Error{Severity: severityError, Code: "0A000", Message: "cached plan must not change result type"})
	return false
}

// awaitServerLocked sends what the batch holds so far, with a Flush, and
// waits until the answer to the last queued message that verifyWait waits
// for (a Describe that checks a shape) has been read. It
// reports false when the connection failed or the server refused a
// message, whose error is then the client's. It unlocks mu while it waits.
func (ss *session) awaitServerLocked(sc *pool.Conn) bool {
	ss.verifyWait, ss.verifyOK = true, false
	toServer, toClient := ss.toServer, ss.toClient
	toServer = append(toServer, 'H', 0, 0, 0, 4) // Flush: the answers come now
	ss.writing = true
	if len(toClient) > 0 {
		ss.wmu.Lock() // before unlocking mu: keeps answers in queue order
	}
	ss.mu.Unlock()
	var cerr error
	if len(toClient) > 0 {
		_, cerr = ss.w.Write(toClient)
		if cerr == nil {
			cerr = ss.w.Flush()
		}
		ss.wmu.Unlock()
	}
	err := sc.Write(toServer)
	if err == nil {
		err = sc.Flush()
	}
	ss.toServer, ss.toClient = toServer[:0], toClient[:0]
	ok := ss.endWrite(err) && cerr == nil
	ss.startPendingRelay(sc)
	ss.mu.Lock()
	for ok && ss.verifyWait && !ss.serverGoneLocked() {
		ss.changed.Wait()
	}
	if !ok || ss.verifyWait || ss.skipping {
		ss.verifyWait = false
		return false
	}
	return true
}

// scratchStmt names the statement checkValuesLocked prepares: no
// statement of the pool's has this name (see pool.Conn.NewStmt).
const scratchStmt = "kpc_values"

// checkValuesLocked queues, before kproxy prepares client statement cs
// again on a server connection for Bind body, the checks Postgres makes at
// that Bind before it plans the statement, and so before it finds the
// schema changed under it (an error of kproxy's Parse, or 0A000): it
// creates the portal (42P03 when a named one is open), decodes the values
// (22P02, 22P03, 22003, 08P01) and reads the message to its end. The server
// makes them on a Bind of the client's values, to the client's portal, of
// a statement that takes the parameter types of cs and is empty, so that
// its portal, like one whose statement failed to plan, describes as
// NoData, with no result formats (a column count is checked once the
// statement is planned). Its errors are the client's. It returns the name
// of the named portal that Bind creates, which the caller closes before the
// client's Bind (closePortalLocked) once the statement is prepared; if the
// Parse fails the portal stays, as Postgres leaves it, created but not
// defined.
//
// In a failed transaction it does nothing: Postgres refuses the Bind
// first (25P02), as the server then refuses kproxy's Parse, unless the
// statement ends the transaction, which an empty one does not.
func (ss *session) checkValuesLocked(body []byte, cs *clientStmt) (portal string) {
	if body == nil || len(cs.fixed) < 2 || ss.txStatus == 'E' {
		return ""
	}
	_, start, end, ok := bindStatement(body)
	if !ok {
		return ""
	}
	r := reply{kind: replySwallow, msg: 'C', scratch: true}
	ss.toServer = closeStmtFrame(ss.toServer, scratchStmt) // left by a check that failed
	ss.replies = append(ss.replies, r)
	r.msg = 'P'
	ss.toServer = parseFrame(ss.toServer, scratchStmt, nil, cs.fixed)
	ss.replies = append(ss.replies, r)
	probe := make([]byte, 0, len(body)+len(scratchStmt))
	probe = append(append(probe, body[:start]...), scratchStmt...)
	values, formats := bindValuesEnd(body, end+1), -1
	if values >= 0 {
		formats = int16sEnd(body, values)
	}
	if formats >= 0 {
		probe = append(append(append(probe, body[end:values]...), 0, 0), body[formats:]...)
	} else {
		probe = append(probe, body[end:]...) // short: the server says where
	}
	r.msg = 'B'
	ss.toServer = append(binary.BigEndian.AppendUint32(append(ss.toServer, 'B'), uint32(4+len(probe))), probe...)
	ss.replies = append(ss.replies, r)
	r.msg = 'C'
	ss.toServer = closeStmtFrame(ss.toServer, scratchStmt)
	ss.replies = append(ss.replies, r)
	return string(body[:start-1])
}

// closePortalLocked queues a Close of the named portal (none: "") that
// checkValuesLocked created.
func (ss *session) closePortalLocked(portal string) {
	if portal == "" {
		return
	}
	ss.toServer = append(binary.BigEndian.AppendUint32(append(ss.toServer, 'C'), uint32(4+1+len(portal)+1)), 'P')
	ss.toServer = append(append(ss.toServer, portal...), 0)
	ss.replies = append(ss.replies, reply{kind: replySwallow, msg: 'C', scratch: true})
}

// bindValuesEnd returns where the parameter values of a Bind body end,
// given where its parameter format codes start, or -1 if it is short.
func bindValuesEnd(body []byte, i int) int {
	if i = int16sEnd(body, i); i < 0 || len(body) < i+2 {
		return -1
	}
	params := int(binary.BigEndian.Uint16(body[i:]))
	i += 2
	for range params {
		if len(body) < i+4 {
			return -1
		}
		if n := int32(binary.BigEndian.Uint32(body[i:])); n > 0 {
			i += int(n)
		}
		i += 4
	}
	if i > len(body) {
		return -1
	}
	return i
}

// int16sEnd returns where a count of int16s at body[i:], and they, end, or
// -1 if body is short.
func int16sEnd(body []byte, i int) int {
	if len(body) < i+2 {
		return -1
	}
	if i += 2 + 2*int(binary.BigEndian.Uint16(body[i:])); i > len(body) {
		return -1
	}
	return i
}

// bindRefusedLocked reports whether Bind body of cs, named name by the
// client, fails the checks Postgres makes before it looks at the schema,
// and if so fails the batch with Postgres' error. kproxy makes them itself
// before it prepares cs again on a connection, whose check of the schema
// would come first.
func (ss *session) bindRefusedLocked(body []byte, cs *clientStmt, name string) bool {
	if body == nil || len(cs.fixed) < 2 {
		return false
	}
	_, _, end, ok := bindStatement(body)
	if !ok || len(body) < end+3 {
		return false
	}
	i := end + 1
	formats := int(binary.BigEndian.Uint16(body[i:]))
	i += 2 + 2*formats
	if len(body) < i+2 {
		return false
	}
	params := int(binary.BigEndian.Uint16(body[i:]))
	want := int(binary.BigEndian.Uint16(cs.fixed))
	var msg string
	switch {
	case formats > 1 && formats != params:
		msg = fmt.Sprintf("bind message has %d parameter formats but %d parameters", formats, params)
	case params != want:
		msg = fmt.Sprintf("bind message supplies %d parameters, but prepared statement \"%s\" requires %d", params, name, want)
	default:
		return false
	}
	ss.failLocked(&Error{Severity: severityError, Code: codeProtocolViolation, Message: msg})
	return true
}

// verifyShapes turns on verifyLocked.
const verifyShapes = true

// failingBind is a Bind of a statement no server connection has.
var failingBind = []byte{'B', 0, 0, 0, 4 + 1 + 8 + 6, 0, 'k', 'p', '_', 'n', 'o', 'n', 'e', 0, 0, 0, 0, 0, 0, 0}

// renameInError returns ErrorResponse msg with the quoted statement name
// server replaced by client.
func renameInError(msg []byte, server, client string) []byte {
	body := bytes.ReplaceAll(msg[5:], []byte(`"`+server+`"`), []byte(`"`+client+`"`))
	out := append([]byte{msg[0]}, binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))...)
	return append(out, body...)
}

func (ss *session) closeOnServerLocked(name string) {
	ss.toServer = closeStmtFrame(ss.toServer, name)
	ss.replies = append(ss.replies, reply{kind: replySwallow, msg: 'C', stmt: name})
}

// enqueueLocked adds an answer kproxy makes up; with nothing owed by the
// server before it, it goes out at once.
func (ss *session) enqueueLocked(r reply) {
	if len(ss.replies) == 0 {
		ss.toClient = ss.madeUpFrameLocked(ss.toClient, &r)
		return
	}
	ss.replies = append(ss.replies, r)
}

// failLocked reports e at this point of the batch, and makes the server
// fail there too: it sends a Bind of a statement no server connection has,
// whose error e replaces. As on Postgres, the error then aborts the
// transaction the batch runs in, explicit or implicit (what ran before it
// in the batch is rolled back), and the server skips to Sync, as kproxy
// does with the client's messages.
func (ss *session) failLocked(e *Error) {
	ss.toServer = append(ss.toServer, failingBind...)
	ss.replies = append(ss.replies, reply{kind: replySwallow, msg: 'B', frame: encodeError(nil, e), substitute: true})
	ss.skipping = true
	ss.describeUnnamed = nil
}

// errNoUnnamedStmt is Postgres' error for a Bind or Describe of the
// unnamed statement when there is none.
var errNoUnnamedStmt = &Error{Severity: severityError, Code: "26000", Message: "unnamed prepared statement does not exist"}

// errFailedTransaction is Postgres' error for a statement in a failed
// transaction.
var errFailedTransaction = &Error{Severity: severityError, Code: "25P02",
	Message: "current transaction is aborted, commands ignored until end of transaction block"}

func (ss *session) madeUpFrameLocked(dst []byte, r *reply) []byte {
	switch r.kind {
	case replyParseComplete:
		return append(dst, '1', 0, 0, 0, 4)
	case replyCloseComplete:
		return append(dst, '3', 0, 0, 0, 4)
	case replyFrame:
		return append(dst, r.frame...)
	}
	return dst
}

// takeMadeUpLocked appends the made-up answers now at the head of the queue.
func (ss *session) takeMadeUpLocked(dst []byte) []byte {
	i := 0
	for i < len(ss.replies) && !ss.replies[i].fromServer() {
		dst = ss.madeUpFrameLocked(dst, &ss.replies[i])
		i++
	}
	ss.popLocked(i)
	return dst
}

func (ss *session) popLocked(n int) {
	if n == 0 {
		return
	}
	clear(ss.replies[:n])
	ss.replies = ss.replies[n:]
	ss.changed.Broadcast() // see readsOwedRebindLocked
	if len(ss.replies) == 0 {
		// Start again at the front of the session's own array; a longer
		// queue than it holds moved to an array of its own, now dropped.
		if ss.replyBuf == nil {
			ss.replyBuf = make([]reply, 0, 4)
		}
		ss.replies = ss.replyBuf[:0]
	}
}

// copyInStarted handles CopyInResponse. Until the client ends the copy, the
// server ignores Sync and Flush; a Sync the client sent right after the
// Execute (as libpq does) will never be answered, so it leaves the queue.
func (ss *session) copyInStarted() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.copyIn = true
	if len(ss.replies) == 0 || ss.replies[0].msg != 'E' {
		return
	}
	i := 1
	for i < len(ss.replies) && ss.replies[i].fromServer() && ss.replies[i].msg == 'S' {
		i++
	}
	if i > 1 {
		ss.replies = append(ss.replies[:1], ss.replies[i:]...)
	}
}

// stmtEffect is what running a statement may do to the session, to be
// checked at the next safe point.
type stmtEffect uint8

const (
	effectSettings stmtEffect = 1 << iota // changes settings
	effectPins                            // may take or drop state that pins
	effectCode                            // runs code: may change anything
	effectSchema                          // may change the schema (Server.schemaGen)
)

// noteSQLLocked records what a statement may do to the session, to be
// checked at the next safe point, and returns the scan and the effect.
func (ss *session) noteSQLLocked(sql string) (classify.Session, stmtEffect) {
	var funcs map[string]bool
	if m := ss.srv.userFuncs.Load(); m != nil {
		funcs = *m
	}
	scan := classify.ScanSessionCalls(sql, funcs)
	if scan.FunctionDDL {
		ss.funcDDL = true
		ss.srv.requestRefresh()
	}
	var eff stmtEffect
	if scan.Settings {
		eff |= effectSettings
	}
	if scan.RunsCode || ss.srv.funcsStale.Load() {
		eff |= effectCode
	}
	if scan.Schema {
		eff |= effectSchema
	}
	if eff&(effectSchema|effectCode) != 0 {
		// Raised now and when the transaction ends, after which what
		// it did is seen by every Parse (readyForQueryLocked); and at
		// each Bind of a statement with that effect (markLocked).
		ss.srv.schemaGen.Add(1)
		ss.schemaTx = true
	}
	if eff&^effectSchema != 0 {
		// Custom settings (app.tenant, kproxy.target) are not in
		// pg_settings: remember the names the text sets (in a DO block's
		// body too) to read them back.
		for _, m := range customSettingRE.FindAllStringSubmatch(sql, -1) {
			name := strings.ToLower(m[1] + m[2])
			if ss.customSettings == nil {
				ss.customSettings = map[string]bool{}
			}
			if len(ss.customSettings) < maxCustomSettings {
				ss.customSettings[name] = true
			}
		}
	}
	switch {
	case scan.Pin == classify.EffectLoad:
		ss.loaded = true
		ss.setPinLocked(classify.EffectLoad)
	case scan.Pin != classify.EffectNone:
		eff |= effectPins
	case scan.MayRelease && ss.pin != classify.EffectNone:
		ss.checkPins = true
	}
	ss.markLocked(eff)
	return scan, eff
}

// markLocked asks for what eff may have changed to be read back at the
// next safe point. Code may change any setting, take any pinning state,
// and set custom settings whose names kproxy never sees: the connection
// is reset before it serves another client (pool.Conn.NeedsReset).
func (ss *session) markLocked(eff stmtEffect) {
	if eff&(effectSettings|effectCode) != 0 {
		ss.dirtySettings = true
	}
	if eff&(effectPins|effectCode) != 0 {
		ss.checkPins = true
	}
	if eff&effectCode != 0 {
		ss.ranCode = true
	}
	if eff&(effectSchema|effectCode) != 0 {
		// Raised now and when the transaction ends, after which what
		// it did is seen by every Parse (readyForQueryLocked).
		ss.srv.schemaGen.Add(1)
		ss.schemaTx = true
	}
}

// failBatchLocked handles an ErrorResponse to the extended-protocol message
// at the head of the queue: the server skips everything up to the next
// Sync, so the queue entries up to it are dropped and what they would have
// done is undone.
func (ss *session) failBatchLocked(sc *pool.Conn) {
	i := 0
	for i < len(ss.replies) && (i == 0 || !ss.replies[i].fromServer() || ss.replies[i].msg != 'S') {
		i++
	}
	// Latest first: each entry gives back the state from before it.
	for k := i - 1; k >= 0; k-- {
		ss.undoLocked(sc, &ss.replies[k], ss.replies[i:])
	}
	ss.popLocked(i)
	ss.describeUnnamed = nil // the server skips its Parse, or has failed it
	if len(ss.replies) == 0 {
		// The Sync is still to come: drop everything until then.
		ss.skipping = true
	}
}

// undoLocked undoes what kproxy did when it planned r, whose message the
// server refused (the head of the queue, r.failed) or skipped. later holds
// the queued messages of the batches after r's, which kproxy planned on top
// of what r did: what r replaced goes back to the first of them that
// changes the same statement, which then gives it back if it fails in
// turn, or to the client when none does.
func (ss *session) undoLocked(sc *pool.Conn, r *reply, later []reply) {
	if r.setsUnnamed {
		prev := r.prevUnnamed
		if r.failed && r.msg == 'P' {
			// Postgres drops the unnamed statement before it parses.
			prev = nil
		}
		ss.rebaseUnnamedLocked(later, prev)
	}
	switch {
	case r.scratch:
		// kproxy's own: nothing of the client's or the pool's.
	case (r.kind == replyCloseComplete || r.kind == replyFrame) && r.saved != nil:
		ss.rebaseStmtLocked(later, r.client, r.saved)
	case r.savedAll != nil && !r.failed:
		// Skipped (a failed DEALLOCATE ALL or DISCARD ALL is handled at its
		// end).
		for n, cs := range r.savedAll {
			ss.rebaseStmtLocked(later, n, cs)
		}
	case r.kind == replyParseComplete && r.client != "":
		ss.rebaseStmtLocked(later, r.client, nil)
	case r.fromServer() && r.msg == 'P' && r.stmt == "":
		// The server's unnamed statement is not what kproxy sent.
		sc.SetUnnamedOwner(nil)
	case r.fromServer() && r.msg == 'P':
		// The server does not have the statement: it refused or skipped
		// the Parse.
		sc.StmtFailed(r.stmt)
		if cs := r.cs; cs.sc == sc && cs.name == r.stmt {
			cs.sc, cs.name = nil, ""
		}
		if r.kind == replyForward && r.client != "" {
			ss.rebaseStmtLocked(later, r.client, nil)
		}
	case r.fromServer() && r.msg == 'D' && r.verify:
		ss.verifyWait = false
		ss.changed.Broadcast()
	case r.kind == replySwallow && r.msg == 'C' && r.stmt != "":
		// The server skipped the Close: the statement is still there.
		sc.CloseLater(r.stmt)
	}
}

// rebaseUnnamedLocked gives the client's unnamed statement back as prev,
// an undone message having replaced it (see undoLocked).
func (ss *session) rebaseUnnamedLocked(later []reply, prev *clientStmt) {
	for i := range later {
		if later[i].setsUnnamed {
			later[i].prevUnnamed = prev
			return
		}
	}
	ss.unnamed = prev
}

// rebaseStmtLocked gives the client's statement name back as before (nil:
// no statement), an undone message having replaced it (see undoLocked).
func (ss *session) rebaseStmtLocked(later []reply, name string, before *clientStmt) {
	for i := range later {
		r := &later[i]
		switch {
		case r.savedAll != nil:
			if before == nil {
				delete(r.savedAll, name)
			} else {
				r.savedAll[name] = before
			}
			return
		case r.client != name:
		case r.kind == replyCloseComplete || r.kind == replyFrame:
			r.saved = before
			return
		case r.kind == replyForward && r.msg == 'P', r.kind == replyParseComplete:
			return // the name was free when it was planned
		}
	}
	if cur := ss.stmts[name]; cur != nil {
		delete(ss.stmts, name)
		ss.releaseStmt(cur)
	}
	if before != nil {
		ss.restoreStmtLocked(name, before)
	}
}

// noteErrorLocked notes an ErrorResponse for the head of the queue.
//
// A server statement that fails that way keeps its place: it has the shape
// of the client statements that use it, which have changed under their
// clients just as much, and Postgres would tell them so.
func (ss *session) noteErrorLocked(r *reply) {
	r.failed = true
}

// relayServer is the server goroutine: it forwards server messages to the
// client, following the reply queue, until the connection is detached, the
// client leaves, or the server connection fails.
func (ss *session) relayServer(sc *pool.Conn, done chan struct{}) {
	ss.relay(sc, done, false)
}

// relayInline is relayServer run by the client goroutine itself, once the
// client has sent a transaction's first batch (up to a Query or a Sync)
// and nothing behind it: the client waits for the answer, so nothing is
// lost by not reading it meanwhile, and one goroutine handing the
// transaction to another costs more than the rest of kproxy's work on it.
// As soon as the client may have to send more before the server is done
// (COPY FROM STDIN, or a ReadyForQuery that leaves the connection
// attached), the rest of the relay moves to a goroutine of its own and
// relayInline returns.
func (ss *session) relayInline(sc *pool.Conn, done chan struct{}) {
	ss.mu.Lock()
	ss.inlineSC = sc
	ss.mu.Unlock()
	ss.relay(sc, done, true)
	ss.mu.Lock()
	ss.inlineSC = nil
	ss.mu.Unlock()
}

func (ss *session) relay(sc *pool.Conn, done chan struct{}, inline bool) {
	handedOff := false
	defer func() {
		if handedOff {
			return
		}
		close(done)
		ss.mu.Lock()
		ss.changed.Broadcast()
		ss.mu.Unlock()
	}()
	handOff := func() {
		handedOff = true
		ss.startRelay(sc, done)
	}
	var post []byte
	for {
		t, msg, err := sc.Next()
		if err != nil {
			ss.mu.Lock()
			if !ss.leaving && ss.replayOK && (ss.replayNow || ss.startReplayLocked()) {
				ss.replayOnPrimaryLocked(sc, err)
				return
			}
			leaving := ss.leaving
			ss.mu.Unlock()
			if !leaving {
				ss.mu.Lock()
				target := ss.target
				ss.target = pool.Target{}
				ss.mu.Unlock()
				target.Done(ss.srv.cluster, err)
				ss.logger().Info("server connection lost", zap.Uint32("server_pid", sc.PID()), zap.Error(err))
				ss.kill(&Error{Severity: severityFatal, Code: codeConnectionFailure,
					Message: "server closed the connection unexpectedly", Err: err})
			}
			return
		}
		switch t {
		case 'C', 'E':
			sc.NoteResult(t == 'E')
		case '1', '2', '3', 'n', 't', 'T', 'I', 's', 'Z':
		case 'G':
			ss.copyInStarted()
			fallthrough
		case 'S':
			// A reported setting changed, whatever changed it (SET, a
			// function, SET SESSION AUTHORIZATION): read the settings
			// back at the safe point.
			ss.mu.Lock()
			ss.dirtySettings = true
			ss.mu.Unlock()
			fallthrough
		default: // rows, copy data, notices: never the end of an answer
			if ss.writeClient(msg, sc.Buffered() == 0) != nil {
				sc.MarkBroken()
				ss.closeConn()
				return
			}
			if inline && t == 'G' { // the client sends the data next
				handOff()
				return
			}
			continue
		}

		ss.mu.Lock()
		if t == 'C' || t == 'E' || t == 'Z' {
			ss.copyIn = false // a COPY FROM STDIN, if any, is over
		}
		if t == 'E' && ss.replayOK && !ss.replayNow {
			switch errorCode(msg) {
			case codeReadOnlyTransaction, codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow:
				// Refused as a write, or the replica is going away (its
				// connection closes next).
				ss.startReplayLocked()
			}
		}
		if t == 'Z' && ss.replayNow {
			if len(msg) == 6 {
				ss.txStatus = msg[5]
			}
			ss.replayOnPrimaryLocked(sc, nil)
			return
		}
		var forward bool
		msg, forward = ss.answerLocked(sc, t, msg)
		forward = forward && !ss.replayNow
		if t != 'Z' {
			post = ss.takeMadeUpLocked(post[:0])
			if ss.replayNow {
				post = post[:0]
			}
			ss.wmu.Lock()
			ss.mu.Unlock()
			var werr error
			if forward {
				_, werr = ss.w.Write(msg)
			}
			if werr == nil && len(post) > 0 {
				_, werr = ss.w.Write(post)
			}
			if werr == nil && sc.Buffered() == 0 {
				werr = ss.w.Flush()
			}
			ss.wmu.Unlock()
			if werr != nil {
				sc.MarkBroken()
				ss.closeConn()
				return
			}
			continue
		}
		if len(msg) != 6 {
			ss.mu.Unlock()
			sc.MarkBroken()
			ss.kill(fatalf(codeProtocolViolation, "server sent a malformed ReadyForQuery"))
			return
		}
		if !ss.readyForQueryLocked(sc, msg[5], &post) {
			return
		}
		if inline { // still attached: the client goes on, and so must the relay
			handOff()
			return
		}
	}
}

// answerLocked does the reply queue's bookkeeping for server message
// (t, msg), which ends the answer to a message or is an error: it pops
// what the answer completes, learns what it says of statements, and, after
// an error in an extended batch, drops what the server skips. It returns
// the message to forward to the client (an error may be replaced or
// renamed) and whether to forward it.
func (ss *session) answerLocked(sc *pool.Conn, t byte, msg []byte) ([]byte, bool) {
	if len(ss.replies) == 0 {
		return msg, true
	}
	forward := true
	head := &ss.replies[0]
	switch {
	case t == 'E':
		ss.noteErrorLocked(head)
		if bytes.Contains(msg, []byte("C0A000\x00")) {
			// A statement changed under a client: what the pool
			// knows of texts may be stale (answerLocallyLocked).
			ss.srv.schemaGen.Add(1)
		}
		switch {
		case head.substitute:
			msg = head.frame
		case head.client != "" && head.stmt != "" && (head.msg == 'B' || head.msg == 'D'):
			// Postgres names the statement in some errors: the
			// client knows it by its own name.
			msg = renameInError(msg, head.stmt, head.client)
		case head.errPrefix != nil && !bytes.Contains(msg, []byte("C25P02\x00")):
			msg = append(head.errPrefix, msg...)
		}
		if extended(head.msg) {
			ss.failBatchLocked(sc)
		}
	case ends(head.msg, t):
		forward = head.kind == replyForward
		if t == '1' && head.stmt != "" {
			sc.StmtReady(head.stmt)
		}
		if head.msg == 'D' && head.cs != nil {
			ss.shapedLocked(sc, head, t, msg)
		}
		if head.dropsAll {
			sc.ForgetAllPrepared()
			if head.failed {
				sc.MarkBroken() // which statements survived is unknown
				// Most often it failed as a whole (in a failed
				// transaction, or DISCARD ALL in one): the client
				// keeps its statements.
				for n, cs := range head.savedAll {
					if ss.stmts[n] == nil {
						ss.restoreStmtLocked(n, cs)
					}
				}
			}
		}
		ss.popLocked(1)
	default:
		forward = head.kind == replyForward
		if t == 't' && head.msg == 'D' && head.cs != nil {
			ss.descParams = append(ss.descParams[:0], msg[5:]...)
		}
	}
	return msg, forward
}

// readyForQueryLocked handles a ReadyForQuery with status st: at the safe
// point of transaction mode it reads back session state if needed and
// detaches the connection. It unlocks mu, and returns false when
// relayServer must stop.
func (ss *session) readyForQueryLocked(sc *pool.Conn, st byte, post *[]byte) bool {
	safe := ss.readyLocked(st, post)
	if ss.mustCheckLocked(safe) {
		ch := make(chan struct{})
		ss.checking = ch
		// The client goroutine may still be returning from its Flush.
		for ss.writing {
			ss.changed.Wait()
		}
		ss.mu.Unlock()
		ss.checkSession(sc)
		ss.mu.Lock()
		ss.checking = nil
		close(ch)
		ss.changed.Broadcast()
	}
	detach := ss.mayDetachLocked(safe)
	// A cancel on its way to the backend must land before another client
	// gets it; the cancel's own timeout bounds the wait.
	for detach && ss.cancelling > 0 {
		ss.changed.Wait()
	}
	release := detach
	var target pool.Target
	if detach {
		target = ss.detachLocked()
		if ss.writing {
			ss.releaseAfterWrite = sc
			release = false
		}
	}
	ss.wmu.Lock()
	ss.mu.Unlock()
	_, werr := ss.w.Write(pgwire.ReadyForQuery(st))
	if werr == nil && len(*post) > 0 {
		_, werr = ss.w.Write(*post)
	}
	if release {
		sc.Release()
	}
	if detach {
		target.Done(ss.srv.cluster, nil)
	}
	if werr == nil {
		werr = ss.w.Flush()
	}
	ss.wmu.Unlock()
	if safe && ss.srv.isDraining() {
		ss.kill(fatalf(codeAdminShutdown, "terminating connection because kproxy is shutting down"))
	}
	if detach {
		return false
	}
	if werr != nil {
		sc.MarkBroken()
		ss.closeConn()
		return false
	}
	return true
}

// readyLocked records a ReadyForQuery with status st, and the answers
// kproxy made up behind it in post, and reports whether the session is
// at a safe point (idleLocked).
func (ss *session) readyLocked(st byte, post *[]byte) (safe bool) {
	ss.txStatus = st
	if st == pgwire.TxIdle && ss.schemaTx {
		ss.schemaTx = false
		ss.srv.schemaGen.Add(1)
	}
	if len(ss.replies) == 0 {
		ss.mayEndTx = false
	}
	ss.replayOK = false // its answer is on its way to the client
	ss.replayLog = ss.replayLog[:0]
	*post = ss.takeMadeUpLocked((*post)[:0])
	safe = ss.idleLocked()
	if safe && ss.funcDDL {
		// Now that it has committed (or not), load the functions again.
		ss.funcDDL = false
		ss.srv.requestRefresh()
	}
	return safe
}

// mustCheckLocked reports whether, at a safe point of transaction mode,
// the session state must be read back from the server (checkSession)
// before the connection may serve another client.
func (ss *session) mustCheckLocked(safe bool) bool {
	return safe && ss.mode == config.PoolModeTransaction && !ss.leaving && (ss.dirtySettings || ss.checkPins || ss.wrote)
}

// mayDetachLocked reports whether the server connection leaves the
// session at this ReadyForQuery.
func (ss *session) mayDetachLocked(safe bool) bool {
	return safe && ss.mode == config.PoolModeTransaction && ss.pin == classify.EffectNone && !ss.leaving
}

// detachLocked forgets the attached server connection and returns where
// it came from.
func (ss *session) detachLocked() pool.Target {
	target := ss.target
	ss.target = pool.Target{}
	ss.server = nil
	ss.serverDone = nil
	return target
}

func (ss *session) idleLocked() bool {
	return len(ss.replies) == 0 && !ss.inBatch && ss.txStatus == pgwire.TxIdle
}

// pinCheckSQL counts, in order, the state that pins a client: LISTEN
// channels, session advisory locks, temporary relations, WITH HOLD cursors
// and SQL-level prepared statements.
const pinCheckSQL = `SELECT (SELECT count(*) FROM pg_catalog.pg_listening_channels()),
 (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()),
 (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()),
 (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable),
 (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql);`

var pinOrder = [...]classify.Effect{classify.EffectListen, classify.EffectAdvisoryLock,
	classify.EffectTempTable, classify.EffectHoldCursor, classify.EffectPrepare}

const settingsSQL = `SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'`

// customSettingRE finds custom (dotted) setting names in SET, RESET and
// set_config calls.
var customSettingRE = regexp.MustCompile(`(?i)(?:\b(?:set|reset)\s+(?:session\s+)?|set_config\s*\(\s*')([a-z_][a-z0-9_$]*)(\.[a-z_][a-z0-9_$]*)`)

// maxCustomSettings bounds the custom setting names remembered per client.
const maxCustomSettings = 100

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// checkSession reads back from the server, at a safe point, whether the
// client still holds state that pins it and which settings its session has
// now, so that they can follow it to other server connections.
func (ss *session) checkSession(sc *pool.Conn) {
	ss.mu.Lock()
	pins, settings, wrote, ranCode := ss.checkPins, ss.dirtySettings, ss.wrote, ss.ranCode
	ss.checkPins, ss.dirtySettings, ss.wrote, ss.ranCode = false, false, false, false
	custom := make([]string, 0, len(ss.customSettings))
	for n := range ss.customSettings {
		custom = append(custom, n)
	}
	if ranCode {
		if fs := ss.srv.funcSettings.Load(); fs != nil {
			for _, n := range *fs {
				if !ss.customSettings[n] {
					custom = append(custom, n)
				}
			}
		}
	}
	ss.mu.Unlock()
	if ranCode {
		// Whatever the code did beyond what is read back here, no other
		// client sees it: the connection is reset before serving one.
		sc.SetStateOwner(ss)
	}
	var q strings.Builder
	if wrote {
		// Where the client's write ended, for read-your-writes.
		q.WriteString("SELECT pg_catalog.pg_current_wal_insert_lsn()::text;")
	}
	if pins {
		q.WriteString(pinCheckSQL)
	}
	if settings {
		q.WriteString(settingsSQL)
		// The session user and the role are settings pg_settings does not
		// list; they are read back when they differ from a fresh session's.
		fmt.Fprintf(&q, " UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization')"+
			" WHERE pg_catalog.current_setting('session_authorization') <> %s"+
			" UNION ALL SELECT 'role', pg_catalog.current_setting('role') WHERE pg_catalog.current_setting('role') <> 'none'",
			quoteLiteral(ss.user))
		if len(custom) > 0 {
			q.WriteString(" UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[")
			for i, n := range custom {
				if i > 0 {
					q.WriteString(",")
				}
				q.WriteString(quoteLiteral(n))
			}
			q.WriteString("]::text[]) n WHERE pg_catalog.current_setting(n, true) <> ''")
		}
		q.WriteString(";")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sets, err := sc.Query(ctx, q.String())
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err != nil || len(sets) != btoi(wrote)+btoi(pins)+btoi(settings) {
		ss.logger().Warn("could not read back session state; keeping the client on its server connection", zap.Error(err))
		if ss.pin == classify.EffectNone {
			ss.setPinLocked(classify.EffectSetting)
		}
		return
	}
	if wrote {
		if len(sets[0]) == 1 && len(sets[0][0]) == 1 {
			if lsn, err := pool.ParseLSN(sets[0][0][0]); err == nil && lsn > ss.minLSN {
				ss.minLSN = lsn
			}
		}
		sets = sets[1:]
	}
	if pins {
		pin := classify.EffectNone
		if row := sets[0]; len(row) == 1 && len(row[0]) == len(pinOrder) {
			for i, e := range pinOrder {
				if row[0][i] != "0" {
					pin = e
					break
				}
			}
		}
		if ss.loaded {
			pin = classify.EffectLoad
		}
		ss.setPinLocked(pin)
		sets = sets[1:]
	}
	if settings {
		m := make(map[string]string, len(sets[0]))
		for _, row := range sets[0] {
			if len(row) == 2 {
				m[strings.ToLower(row[0])] = row[1]
			}
		}
		ss.settings = m
		ss.settingsKey = pool.SettingsKey(m)
		sc.SetSettings(m)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// setPinLocked changes the pin, counting pins and their durations.
func (ss *session) setPinLocked(e classify.Effect) {
	if e == ss.pin {
		return
	}
	ss.endPinLocked()
	ss.pin = e
	if e != classify.EffectNone {
		ss.pinSince = time.Now()
		ss.srv.stats.pins[e].Add(1)
		if ce := ss.srv.log.Check(zap.DebugLevel, "client pinned to its server connection"); ce != nil {
			ce.Write(zap.String("user", ss.user), zap.String("database", ss.database), zap.Stringer("reason", e))
		}
	}
}

// endPinLocked ends the current pin, if any.
func (ss *session) endPinLocked() {
	if ss.pin == classify.EffectNone {
		return
	}
	ss.srv.stats.pinNanos[ss.pin].Add(int64(time.Since(ss.pinSince)))
	ss.pin = classify.EffectNone
}

// attachFailed reports a failure to get a server connection the way
// Postgres reports an error at that point of the protocol.
func (ss *session) attachFailed(t byte, err error) bool {
	if err != errCancelledWaiting {
		ss.logger().Info("no server connection for client", zap.Error(err))
	}
	buf := encodeError(nil, err)
	ss.mu.Lock()
	switch t {
	case 'Q', 'S', 'F':
		buf = append(buf, pgwire.ReadyForQuery(ss.txStatus)...)
	default:
		ss.skipping = true
	}
	ss.mu.Unlock()
	return ss.writeClient(buf, true) == nil
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
