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
// keywords, so it is fast and errs on the side of pinning.
package classify
