package proxy

import (
	"bytes"
	"encoding/binary"

	"github.com/kproxy/kproxy/pool"
)

// clientStmt is a client's named prepared statement in transaction mode. Its
// server-side name is derived from the query text and parameter types, so
// clients preparing the same statement share one server statement.
type clientStmt struct {
	server   string // server-side statement name
	parse    []byte // Parse frame that prepares it under the server name
	readOnly bool   // may run on a replica
}

// newClientStmt builds the server statement for a client's Parse of query
// with paramTypes (the raw count and OIDs). The search_path the client has
// is part of the name: it decides which tables the statement refers to.
// The name is pool.StatementName's, which in-process clients use too, so
// both share the statements prepared on a server connection.
func newClientStmt(query []byte, paramTypes []byte, searchPath string) *clientStmt {
	name := pool.StatementName(string(query), paramTypes, searchPath)
	return &clientStmt{server: name, parse: parseFrame(name, query, paramTypes)}
}

// parseFrame encodes a Parse message; paramTypes is the raw count and OID
// list as it came from the client.
func parseFrame(name string, query, paramTypes []byte) []byte {
	n := 4 + len(name) + 1 + len(query) + 1 + len(paramTypes)
	b := make([]byte, 0, 1+n)
	b = append(b, 'P')
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, query...)
	b = append(b, 0)
	return append(b, paramTypes...)
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
