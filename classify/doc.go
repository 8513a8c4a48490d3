// Package classify turns SQL text into what kproxy needs to know about it to
// pool and route it safely. It does no I/O and keeps no state between calls,
// so it is safe for concurrent use.
//
// # Session effects
//
// SessionEffect reports whether a statement leaves state behind in the
// server session (a setting, a prepared statement, a LISTEN, a session
// advisory lock, a temporary table, a WITH HOLD cursor, a loaded library).
// In transaction pooling such a statement pins the client to its server
// connection. The scan is lexical: it skips comments, string literals, quoted
// identifiers and dollar-quoted bodies, splits on semicolons and looks at
// keywords, so it is fast and errs on the side of pinning. ScanSessionCalls
// also reports statements that run code (DO, CALL, calls of given user
// functions), which may change any session state, DDL of functions, and
// any CREATE, ALTER or DROP (Schema), after which a text that parsed
// before may no longer parse, and a SELECT that reads the
// pg_prepared_statements view in its FROM clause (PreparedStatementsView;
// PreparedStatementsRefs says where), which kproxy rewrites to show the
// client's own statements.
//
// # Classification
//
// Classifier.Classify parses SQL with the Postgres parser (pg_query_go) and
// returns a Result: the kind (read_simple, read_complex, write_simple,
// write_bulk, ddl, transaction, unknown), whether the statement is
// ReadOnly, the tables it reads and writes, and flags (locking clause,
// side-effecting function, session state, transaction control, BEGIN READ
// ONLY, comment hints). The routing contract: a ReadOnly statement may run
// on a hot-standby replica and give the same answer; anything the parser
// rejects is not ReadOnly.
//
// Parsing costs tens of microseconds, so results are cached by a normalised
// form of the text in which string and number literals become '?',
// comments without a kproxy hint are dropped and white space is folded:
// pgbench's "WHERE aid = 12345" with a new number each time is a cache hit
// (about 150 ns). Only a new shape is parsed.
package classify
