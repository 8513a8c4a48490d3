package proxy

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"
	"time"

	"github.com/kproxy/kproxy/pool"
)

// clientStmt is a client's prepared statement in transaction mode, named
// or (with unnamed set) its unnamed statement. What a named one maps to on a server connection follows the rules in pool's
// stmt.go: the client's own Parse is prepared afresh, and the statement's
// shape, learned from the Describe kproxy adds to it, decides which server
// statements may stand in for it on other connections.
type clientStmt struct {
	client string // the client's name for it
	key    string // pool.StmtKey of its text, declared parameter types and search_path
	query  []byte // its text
	types  []byte // parameter types as the client declared them (count and OIDs, raw)
	// fixed holds the parameter types the server inferred (count and
	// OIDs, raw) and shape the hash of its description, once described:
	// a copy prepared on another connection takes these types, as
	// Postgres keeps them when it re-plans a statement.
	fixed    []byte
	shape    uint64
	rows     bool // it returns rows (its Describe gave a RowDescription), once described
	unnamed  bool // the client's unnamed statement: not in the pool's statement sets
	readOnly bool // may run on a replica
	closed   bool // the client closed it before its shape was known
	// provisional is set while its shape is what the pool learnt of the
	// text earlier (a Parse kproxy acknowledged itself in schema
	// generation ackGen), not yet checked on a server: DDL kproxy did not
	// see may have changed it, and then the shape of a fresh Parse stands.
	provisional bool
	ackGen      uint64
	// effect is what running it may do to the session (noteSQLLocked),
	// marked again at each Bind.
	effect stmtEffect
	// local is set when it is a DEALLOCATE that kproxy runs itself: it is
	// never prepared on a server.
	local *localDeallocate
	// sc and name are where it was last prepared or found: name is its
	// server statement on sc while sc.HasStmt(name).
	sc   *pool.Conn
	name string
	// view is set when its text reads pg_prepared_statements: query is then
	// kproxy's rewrite of the client's text (preparedview.go).
	view *viewStmt
	at   time.Time // when the client prepared it (a named one)
	path string    // the client's search_path at its Parse (a named one)
}

// clientText returns the text of cs as the client sent it.
func (cs *clientStmt) clientText() []byte {
	if cs.view != nil {
		return cs.view.text
	}
	return cs.query
}

// newClientStmt builds the statement for a client's Parse of query with
// paramTypes (the raw count and OIDs). The search_path the client has is
// part of its key: it decides which tables the statement refers to.
func newClientStmt(query []byte, paramTypes []byte, searchPath string) *clientStmt {
	return &clientStmt{
		key:   pool.StmtKey(string(query), paramTypes, searchPath),
		query: bytes.Clone(query),
		types: bytes.Clone(paramTypes),
		at:    time.Now(),
		path:  searchPath,
	}
}

// newUnnamedStmt builds the client's unnamed statement for its Parse of
// query with paramTypes. It has no key: the pool shares no unnamed
// statement.
func newUnnamedStmt(query []byte, paramTypes []byte) *clientStmt {
	b := make([]byte, 0, len(query)+len(paramTypes))
	b = append(append(b, query...), paramTypes...)
	return &clientStmt{unnamed: true, query: b[:len(query):len(query)], types: b[len(query):]}
}

// paramTypes returns the parameter types a copy of cs is prepared with on
// another connection: those the server inferred once it is described.
func (cs *clientStmt) paramTypes() []byte {
	if cs.shape != 0 && !cs.provisional {
		return cs.fixed
	}
	return cs.types
}

func (cs *clientStmt) id() pool.StmtID { return pool.StmtID{Key: cs.key, Shape: cs.shape} }

// shapeOf hashes what a Describe of a statement says that a client may
// depend on: the parameter types (ParameterDescription body) and each
// result column's name, type and type modifier (RowDescription body, nil
// for NoData). Table OIDs and column numbers are left out: a table dropped
// and created again with the same columns gives statements the same shape,
// as Postgres' own check of a re-planned statement's result sees it. It is
// never 0.
func shapeOf(params, rows []byte) uint64 {
	h := fnv.New64a()
	_, _ = h.Write(params)
	if rows == nil {
		_, _ = h.Write([]byte{'n'})
	} else if len(rows) >= 2 {
		n := int(binary.BigEndian.Uint16(rows))
		b := rows[2:]
		for range n {
			i := bytes.IndexByte(b, 0)
			if i < 0 || len(b) < i+1+18 {
				break
			}
			_, _ = h.Write(b[:i+1])            // name
			_, _ = h.Write(b[i+1+6 : i+1+10])  // type OID
			_, _ = h.Write(b[i+1+12 : i+1+16]) // type modifier
			b = b[i+1+18:]
		}
	}
	if s := h.Sum64(); s != 0 {
		return s
	}
	return 1
}

// parseFrame encodes a Parse message; paramTypes is the raw count and OID
// list as it came from the client.
func parseFrame(dst []byte, name string, query, paramTypes []byte) []byte {
	n := 4 + len(name) + 1 + len(query) + 1 + len(paramTypes)
	dst = append(dst, 'P')
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, query...)
	dst = append(dst, 0)
	return append(dst, paramTypes...)
}

// describeStmtFrame encodes Describe of a prepared statement.
func describeStmtFrame(dst []byte, name string) []byte {
	dst = append(dst, 'D')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(name)+1))
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// closeStmtFrame encodes Close of a prepared statement.
func closeStmtFrame(dst []byte, name string) []byte {
	dst = append(dst, 'C')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(name)+1))
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// splitParse splits a Parse body into name, query and the parameter types
// (count and OIDs, raw). ok is false for a malformed body.
func splitParse(body []byte) (name, query, paramTypes []byte, ok bool) {
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return nil, nil, nil, false
	}
	j := bytes.IndexByte(body[i+1:], 0)
	if j < 0 {
		return nil, nil, nil, false
	}
	name, query, paramTypes = body[:i], body[i+1:i+1+j], body[i+1+j+1:]
	if len(paramTypes) < 2 || len(paramTypes) != 2+4*int(binary.BigEndian.Uint16(paramTypes)) {
		return nil, nil, nil, false
	}
	return name, query, paramTypes, true
}

// bindStatement returns the statement name of a Bind body and where it
// starts and ends.
func bindStatement(body []byte) (name []byte, start, end int, ok bool) {
	i := bytes.IndexByte(body, 0) // end of the portal name
	if i < 0 {
		return nil, 0, 0, false
	}
	j := bytes.IndexByte(body[i+1:], 0)
	if j < 0 {
		return nil, 0, 0, false
	}
	return body[i+1 : i+1+j], i + 1, i + 1 + j, true
}

// replaceRange returns the frame of type t whose body is body with
// body[start:end] replaced by repl.
func replaceRange(dst []byte, t byte, body []byte, start, end int, repl string) []byte {
	n := 4 + len(body) - (end - start) + len(repl)
	dst = append(dst, t)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, body[:start]...)
	dst = append(dst, repl...)
	return append(dst, body[end:]...)
}
