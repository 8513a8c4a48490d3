package proxy

import (
	"context"
	"time"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/pool"
)

// replayed checks, when the router asks, that the replica behind sc has
// replayed the client's last write.
func (ss *session) replayed(t pool.Target, sc *pool.Conn) bool {
	if t.MinLSN == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return ss.srv.cluster.ReplayedOn(ctx, t, sc)
}

// classifyReadOnlyLocked reports whether sql may run on a replica for
// this session: the classifier's verdict, overridden by a comment hint
// (/* kproxy:primary */ or /* kproxy:replica */) and then by the session
// setting kproxy.target (primary, replica or auto). Neither override sends
// a statement the classifier knows writes (or cannot parse) to a replica:
// it would only fail there with 25006.
func (ss *session) classifyReadOnlyLocked(sql string) bool {
	r := ss.srv.classifier.Classify(sql)
	if r.Kind == classify.KindDDL {
		ss.srv.requestRefresh() // it may have created or changed a function
	}
	ro := r.ReadOnly
	// mayRead: a read, or transaction control (a client that asks for a
	// replica gets its BEGIN there).
	mayRead := r.ReadOnly
	if r.Flags&classify.FlagTxControl != 0 {
		// BEGIN READ ONLY may run on a replica; any other transaction
		// control belongs with the primary.
		ro = r.Flags&classify.FlagTxBegin != 0 && r.Flags&classify.FlagReadOnlyTx != 0 && r.Flags&classify.FlagMultiStatement == 0
		mayRead = r.Flags&classify.FlagTxBegin != 0 && r.Flags&classify.FlagMultiStatement == 0
	}
	switch {
	case r.Flags&classify.FlagHintPrimary != 0:
		ro = false
	case r.Flags&classify.FlagHintReplica != 0:
		ro = mayRead
	}
	switch ss.settings["kproxy.target"] {
	case "primary":
		return false
	case "replica":
		return mayRead
	}
	return ro
}

// readOnlyLocked decides, from the first message of a transaction, whether
// the transaction may run on a replica.
func (ss *session) readOnlyLocked(t byte, msg []byte) bool {
	if ss.forcePrimary || ss.readOnPrimary {
		return false
	}
	body := msg[5:]
	switch t {
	case 'Q':
		return ss.classifyReadOnlyLocked(cstring(body))
	case 'P':
		if _, query, _, ok := splitParse(body); ok {
			return ss.classifyReadOnlyLocked(string(query))
		}
	case 'B':
		if name, _, _, ok := bindStatement(body); ok {
			if len(name) == 0 {
				return ss.unnamed != nil && ss.unnamed.readOnly
			}
			if cs := ss.stmts[string(name)]; cs != nil {
				return cs.readOnly
			}
		}
	case 'D':
		if len(body) >= 2 && body[0] == 'S' {
			if body[1] == 0 {
				return ss.unnamed != nil && ss.unnamed.readOnly
			}
			if cs := ss.stmts[cstring(body[1:])]; cs != nil {
				return cs.readOnly
			}
		}
	}
	return false
}

// noteRouteLocked records, for a statement sent to the attached server
// connection, whether it writes on the primary (so that its commit position
// is read back for read-your-writes), and returns whether it is read-only.
func (ss *session) noteRouteLocked(sql string) bool {
	if !ss.routing {
		return false
	}
	ro := ss.classifyReadOnlyLocked(sql)
	if !ro && !ss.target.Replica() {
		ss.wrote = true
	}
	return ro
}
