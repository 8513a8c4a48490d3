package pool

import (
	"strconv"
	"sync"
)

// Server statements and what makes sharing them safe.
//
// A client's statement is fixed when the client prepares it: Postgres
// infers its parameter types then and checks, each time it runs, that its
// result columns are still the ones the client was told about (or fails
// with 0A000 "cached plan must not change result type"). A server statement
// may stand in for a client's statement only if it would behave the same:
// same text, declared parameter types and search_path (StmtID.Key), and
// the same description (StmtID.Shape: inferred parameter types and result
// columns, as Describe reports them). Two clients share a server statement
// exactly when both keys match.
//
// A client's Parse is always prepared afresh on the server (under a name
// of its own, NewStmt), because only a fresh Parse says what the current
// schema makes of the text; kproxy learns its shape from a Describe it adds.
// The invariant that keeps every Bind on the statement its client
// prepared: a server statement is believed to exist on a connection only
// once that connection's ParseComplete for it has been read (StmtReady).
// Until then its entry is pending and only the holder that sent the Parse
// may use it, in the same pipeline, where the server keeps the order; a
// Parse the server refused or skipped removes the entry (StmtFailed).

// StmtID identifies what a server statement does: Key is a hash of its
// text, declared parameter types and search_path (StmtKey), Shape a hash of
// its description (0 while unknown).
type StmtID struct {
	Key   string
	Shape uint64
}

// stmtEntry is one statement kproxy prepared on a connection.
type stmtEntry struct {
	id    StmtID
	ready bool // its ParseComplete was read
}

// StmtKey returns the StmtID.Key of a statement: a hash of query, the raw
// parameter types of its Parse (count and OIDs) and the session's
// search_path.
func StmtKey(query string, paramTypes []byte, searchPath string) string {
	return StatementName(query, paramTypes, searchPath)[len(statementPrefix):]
}

// NewStmt records that a statement with key is being prepared on the
// connection under the returned name, with its shape still unknown, and
// returns the names pushed out of the connection's statement set, which the
// caller must close on the server before the Parse.
func (c *Conn) NewStmt(key string) (name string, evicted []string) {
	c.stmtSeq++
	name = "kpc_" + key[:12] + "_" + strconv.FormatUint(c.stmtSeq, 36)
	evicted = c.makeRoom()
	c.prepared.Add(name, &stmtEntry{id: StmtID{Key: key}})
	c.pending++
	c.preparedCount.Store(int64(c.prepared.Len()))
	return name, evicted
}

// makeRoom evicts the least recently used ready statements beyond the
// pool's limit, and returns them with those waiting in closeLater. A
// pending statement is never evicted: its Parse is still on its way.
func (c *Conn) makeRoom() []string {
	evicted := c.closeLater
	c.closeLater = nil
	limit := c.pool.maxPrepared()
	for tries := c.prepared.Len(); c.prepared.Len() >= limit && tries > 0; tries-- {
		name, e, ok := c.prepared.GetOldest()
		if !ok {
			break
		}
		if !e.ready {
			c.prepared.Get(name) // to the front; try the next oldest
			continue
		}
		c.removeStmt(name, e)
		evicted = append(evicted, name)
	}
	c.pool.preparedEvictions.Add(int64(len(evicted)))
	return evicted
}

func (c *Conn) removeStmt(name string, e *stmtEntry) {
	if !e.ready {
		c.pending--
	}
	c.prepared.Remove(name)
	if e.id.Shape != 0 && c.byID[e.id] == name {
		delete(c.byID, e.id)
	}
	delete(c.stale, name)
	c.preparedCount.Store(int64(c.prepared.Len()))
}

// StmtReady records that the server answered name's Parse with
// ParseComplete.
func (c *Conn) StmtReady(name string) {
	if e, ok := c.prepared.Peek(name); ok && !e.ready {
		e.ready = true
		c.pending--
	}
}

// StmtShaped records name's shape, learned from the server's Describe, so
// that clients whose statement has the same StmtID use it. A statement it
// replaces is closed with the next NewStmt.
func (c *Conn) StmtShaped(name string, shape uint64) {
	e, ok := c.prepared.Peek(name)
	if !ok || shape == 0 {
		return
	}
	e.id.Shape = shape
	if old, dup := c.byID[e.id]; dup && old != name {
		if oe, ok := c.prepared.Peek(old); ok {
			c.removeStmt(old, oe)
			c.closeLater = append(c.closeLater, old)
		}
	}
	if c.byID == nil {
		c.byID = map[StmtID]string{}
	}
	c.byID[e.id] = name
}

// StmtFailed records that name's Parse failed or was skipped: the server
// does not have it.
func (c *Conn) StmtFailed(name string) {
	if e, ok := c.prepared.Peek(name); ok {
		c.removeStmt(name, e)
	}
}

// HasStmt reports whether the statement name is prepared (or being
// prepared by the holder) on the connection, marking it recently used.
func (c *Conn) HasStmt(name string) bool {
	_, ok := c.prepared.Get(name)
	return ok
}

// ReadyStmt reports whether the connection has a ready statement for id,
// without counting a hit or a miss or marking it used.
func (c *Conn) ReadyStmt(id StmtID) bool {
	name, ok := c.byID[id]
	if !ok {
		return false
	}
	e, found := c.prepared.Peek(name)
	return found && e.ready
}

// LookupStmt returns the connection's ready statement for id, counting a
// hit or a miss.
func (c *Conn) LookupStmt(id StmtID) (string, bool) {
	name, ok := c.byID[id]
	if ok {
		if e, found := c.prepared.Get(name); !found || !e.ready {
			ok = false
		}
	}
	if ok {
		c.pool.preparedHits.Add(1)
	} else {
		c.pool.preparedMisses.Add(1)
	}
	return name, ok
}

// dropPending removes the statements whose Parse was never answered; at a
// release there should be none, since the safe point waits for every
// answer.
func (c *Conn) dropPending() {
	if c.pending == 0 {
		return
	}
	for _, name := range c.prepared.Keys() {
		if e, ok := c.prepared.Peek(name); ok && !e.ready && e.id.Key != "" {
			c.removeStmt(name, e)
			c.closeLater = append(c.closeLater, name) // in case it exists after all
		}
	}
}

// TakeGarbage returns the statements of the connection that no client
// holds any more (see Pool.UnrefStmt), and those replaced or no longer
// tracked (closeLater), and forgets them; the holder closes them on the
// server before anything else it sends.
func (c *Conn) TakeGarbage() []string {
	names := c.closeLater
	c.closeLater = nil
	g := &c.pool.garbage
	g.mu.Lock()
	if g.seq == c.gcSeen {
		g.mu.Unlock()
		return names
	}
	var ids []StmtID
	full := c.gcSeen < g.seq-uint64(len(g.ids))
	if !full {
		ids = append(ids, g.ids[len(g.ids)-int(g.seq-c.gcSeen):]...)
	}
	c.gcSeen = g.seq
	g.mu.Unlock()
	drop := func(id StmtID) {
		if name, ok := c.byID[id]; ok && c.pool.stmtRefs(id) == 0 {
			if e, ok := c.prepared.Peek(name); ok && e.ready {
				c.removeStmt(name, e)
				names = append(names, name)
			}
		}
	}
	if full {
		for id := range c.byID {
			drop(id)
		}
	} else {
		for _, id := range ids {
			drop(id)
		}
	}
	return names
}

// stmtGarbage lists, in order, the statement IDs whose last client
// reference went away, so that each connection closes its copy.
type stmtGarbage struct {
	mu   sync.Mutex
	refs map[StmtID]int // guarded by mu: client statements per ID
	ids  []StmtID       // guarded by mu: the last maxGarbage IDs unreferenced
	seq  uint64         // guarded by mu: IDs unreferenced so far
}

// maxGarbage bounds stmtGarbage.ids; a connection further behind checks
// all its statements.
const maxGarbage = 4096

// RefStmt records that a client holds a statement with id.
func (p *Pool) RefStmt(id StmtID) {
	if id.Shape == 0 {
		return
	}
	g := &p.garbage
	g.mu.Lock()
	if g.refs == nil {
		g.refs = map[StmtID]int{}
	}
	g.refs[id]++
	g.mu.Unlock()
}

// UnrefStmt records that a client let go of its statement with id (Close,
// DEALLOCATE, DISCARD ALL or the end of its session). When no client holds
// one any more, every connection closes its copy the next time it is
// taken, so the server holds only statements some client still has.
func (p *Pool) UnrefStmt(id StmtID) {
	if id.Shape == 0 {
		return
	}
	g := &p.garbage
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refs[id]--; g.refs[id] > 0 {
		return
	}
	delete(g.refs, id)
	g.seq++
	if len(g.ids) == maxGarbage {
		copy(g.ids, g.ids[1:])
		g.ids = g.ids[:maxGarbage-1]
	}
	g.ids = append(g.ids, id)
}

func (p *Pool) stmtRefs(id StmtID) int {
	g := &p.garbage
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refs[id]
}

// KnownShape is what a connection of the pool learnt of a statement it
// prepared without error: the schema generation it was prepared in (a
// number the caller raises whenever the schema may have changed) and what
// its Describe said. Fixed is never modified.
type KnownShape struct {
	Gen   uint64
	Shape uint64 // the caller's hash of the description
	Fixed []byte // the parameter types the server inferred (count and OIDs, raw)
	Rows  bool   // it returns rows
}

// KnownStmt returns what is known of the statement with key if it was
// prepared in schema generation gen: a text is trusted to parse, with
// that description, only while nothing it names can have changed.
func (p *Pool) KnownStmt(key string, gen uint64) (KnownShape, bool) {
	k, ok := p.known.Get(key)
	if !ok || k.Gen != gen {
		return KnownShape{}, false
	}
	return k, true
}

// AddKnownStmt records what a Describe said of the statement with key.
func (p *Pool) AddKnownStmt(key string, k KnownShape) { p.known.Add(key, k) }

// knownStmts bounds Pool.known.
const knownStmts = 10000
