package proxy

import (
	"bytes"
	"encoding/binary"

	"go.uber.org/zap"

	"github.com/kproxy/kproxy/internal/pgwire"
	"github.com/kproxy/kproxy/pool"
)

// A replica refuses with 25006 what the classifier took for a read but
// writes: a function it did not know to be volatile, say. If nothing of
// the transaction's answer has reached the client yet, kproxy drops what it
// holds of that answer, runs the client's messages again on the primary,
// and remembers the statement's shape so that it goes to the primary from
// then on. The client sees only the primary's answer.
//
// The same holds when the replica's connection fails (the replica crashed)
// before anything reached the client: the read runs on the primary.

// maxReplayBytes bounds the client messages kept to replay a transaction.
const maxReplayBytes = 64 << 10

// errorCode returns the SQLSTATE of ErrorResponse frame msg.
func errorCode(msg []byte) string {
	if len(msg) < 5 {
		return ""
	}
	b := msg[5:]
	for len(b) > 0 && b[0] != 0 {
		field := b[0]
		end := bytes.IndexByte(b[1:], 0)
		if end < 0 {
			return ""
		}
		if field == 'C' {
			return string(b[1 : 1+end])
		}
		b = b[2+end:]
	}
	return ""
}

// startReplayLocked is called on a 25006 ErrorResponse from the replica:
// when the transaction can still be replayed (its messages make one batch,
// nothing more was sent after it, nothing reached the client) it drops the
// answer held so far, holds the client's next messages back, and sets
// replayNow so that relayServer drops the rest of the answer.
func (ss *session) startReplayLocked() bool {
	if len(ss.replies) == 0 || ss.inBatch || ss.checking != nil || ss.copyIn || ss.txStatus != pgwire.TxIdle {
		return false
	}
	switch head := ss.replies[0]; {
	case !head.fromServer():
		return false
	case head.msg == 'Q' || head.msg == 'F':
		if len(ss.replies) != 1 {
			return false
		}
	default: // extended: the batch's Sync must be the last thing owed
		last := ss.replies[len(ss.replies)-1]
		if !last.fromServer() || last.msg != 'S' {
			return false
		}
		for _, r := range ss.replies[:len(ss.replies)-1] {
			if r.fromServer() && (r.msg == 'S' || r.msg == 'Q' || r.msg == 'F') {
				return false
			}
		}
	}
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if ss.sent.n != ss.sentAtAttach {
		return false // part of the answer reached the client
	}
	ss.w.Discard()
	ss.replayNow = true
	ss.checking = make(chan struct{})
	return true
}

// replayOnPrimaryLocked runs the transaction again on the primary: at the
// replica's ReadyForQuery after it refused the transaction, or when the
// replica's connection failed (failed is then the error). It unlocks mu;
// sc is then back in its pool and relayServer must stop.
func (ss *session) replayOnPrimaryLocked(sc *pool.Conn, failed error) {
	gate := ss.checking
	for ss.writing { // the client goroutine may still be flushing the batch
		ss.changed.Wait()
	}
	target := ss.target
	ss.target = pool.Target{}
	ss.server, ss.serverDone = nil, nil
	ss.replayNow, ss.replayOK = false, false
	log := ss.replayLog
	ss.replayLog = nil
	// What the messages did to the client's statements is undone: they
	// run again.
	for i := len(ss.replies) - 1; i >= 0; i-- {
		ss.undoLocked(sc, &ss.replies[i], nil)
	}
	ss.popLocked(len(ss.replies))
	ss.skipping, ss.inBatch = false, false
	learned := 0
	if failed == nil {
		learned = ss.learnLocked(log)
		ss.forcePrimary = true
	} else {
		ss.readOnPrimary = true
	}
	ss.mu.Unlock()

	if failed != nil {
		sc.MarkBroken()
	}
	sc.Release()
	target.Done(ss.srv.cluster, failed)
	ss.srv.cluster.NoteReplayed(failed != nil)
	if failed != nil {
		ss.logger().Info("a replica's connection failed before its answer reached the client; running the transaction on the primary",
			zap.Error(failed))
	} else {
		ss.logger().Info("a replica refused a transaction as a write; running it on the primary",
			zap.Int("shapes_learned", learned))
	}

	ok := true
	for len(log) >= 5 {
		n := 1 + int(binary.BigEndian.Uint32(log[1:5]))
		frame := log[:n]
		log = log[n:]
		ss.mu.Lock()
		if !ss.dispatchLocked(frame[0], frame, len(log) == 0) {
			ok = false
			break
		}
	}
	ss.mu.Lock()
	ss.forcePrimary, ss.readOnPrimary = false, false
	if ss.checking == gate {
		ss.checking = nil
	}
	close(gate)
	ss.changed.Broadcast()
	ss.mu.Unlock()
	if !ok {
		ss.closeConn()
	}
}

// learnLocked teaches the classifier the shapes of the read-only
// statements in client messages log, and marks the client's statements
// they use as writes. It returns how many shapes were new.
func (ss *session) learnLocked(log []byte) int {
	learned := 0
	learn := func(sql string) {
		if ss.srv.classifier.Classify(sql).ReadOnly && ss.srv.classifier.Learn(sql) {
			learned++
		}
	}
	for len(log) >= 5 {
		n := 1 + int(binary.BigEndian.Uint32(log[1:5]))
		t, body := log[0], log[5:n]
		log = log[n:]
		switch t {
		case 'Q':
			learn(cstring(body))
		case 'P':
			if _, query, _, ok := splitParse(body); ok {
				learn(string(query))
			}
		case 'B':
			name, _, _, ok := bindStatement(body)
			if !ok {
				continue
			}
			if len(name) == 0 {
				if u := ss.unnamed; u != nil {
					u.readOnly = false
					learn(string(u.query))
				}
			} else if cs := ss.stmts[string(name)]; cs != nil {
				cs.readOnly = false
				learn(string(cs.query))
			}
		}
	}
	return learned
}
