// Package proxy is kproxy's client-facing server: it accepts connections,
// negotiates TLS, reads the startup packet, authenticates the client, and
// relays the PostgreSQL protocol between the client and server connections
// taken from package pool.
//
// # Lifecycle of a client
//
// A connection goes through startup (SSLRequest, GSSENCRequest, CancelRequest
// or StartupMessage), authentication (trust, md5 or SCRAM-SHA-256 against
// the configured users), login (a server connection is taken to learn the
// server's parameters and check that the database and user exist) and then
// the relay until the client sends Terminate or disconnects.
//
// # Pooling and the safe point
//
// In session mode a client keeps one server connection from login to
// disconnect; the connection is reset with DISCARD ALL before it serves
// anyone else. In transaction mode the connection is handed back at the safe
// point: a ReadyForQuery with status idle, with every message sent to the
// server answered and no extended-protocol batch open.
//
// # Keeping session semantics in transaction mode
//
// A session's reply queue lists, in order, what the server owes for each
// message sent to it, and the answers kproxy makes up in between. That lets
// kproxy add messages of its own (a Parse of a statement the server
// connection lacks, a Close of one evicted from its LRU, a Describe that
// learns a statement's shape) and swallow their answers, and answer some
// messages itself (CloseComplete, a DEALLOCATE of the client's statements,
// the description of a statement that returns no rows), with every answer
// reaching the client in the order Postgres would send it. Every error
// kproxy makes up goes with a Bind the server fails too, so that the
// server aborts the batch's transaction and skips to Sync just as Postgres
// would have. After an error in an extended batch the queue drops what the
// server skips and undoes, latest first, what planning those messages did
// to the client's statements; a later batch already planned on top of
// them gets the earlier state back in its own undo record. A message that
// uses a statement an earlier batch still running redefines waits for
// that batch's answer.
//
// Named statements map to server statements that kproxy names itself (see
// stmt.go and pool's stmt.go). The invariant that keeps every Bind on the
// statement its client prepared: a server statement stands in for a
// client's only with the same text, declared types, search_path and shape
// (the description the client was given), and is believed to exist on a
// connection only once that connection's ParseComplete for it was read. A
// client's Parse reaches the server, so that its errors are the schema's
// of the moment, except a Parse outside a transaction of a text the pool
// prepared and described in the current schema generation: that one is
// acknowledged at once with the description learnt then (drivers that
// prepare synchronously from one thread for many clients, as pgbench
// does, would otherwise wait for a free connection while their other
// clients hold them all). The generation (Server.schemaGen) goes up when
// kproxy plans a statement that may change the schema (CREATE, ALTER,
// DROP, code) and again when its transaction ends; DDL that does not pass
// through kproxy is not seen, and a Parse it made invalid fails at the
// statement's first Bind or Describe instead. The unnamed statement is the client's *clientStmt,
// which a server connection records as its owner (pool.Conn.UnnamedOwner):
// it is re-created, with the parameter types first inferred, unless the
// connection holds that very statement; its shape is learnt by a Describe
// kproxy adds after the Parse unless the client describes it itself.
//
// A statement prepared again on another connection is described and
// checked against the shape the client knows: when the schema changed
// under it, the client gets 0A000 where Postgres would give it (it is not
// healed: drivers such as pgx expect it, and decode rows with the old
// description), after the checks Postgres makes first (the Bind's
// parameter count, 08P01) and, for a Describe, after the parameter types.
// A Describe of a statement that returns no rows is answered from what
// kproxy learnt, as Postgres answers it from what it stored. DEALLOCATE of
// the client's statements, by any protocol, is run by kproxy itself: on
// the server the names are kproxy's and the statements shared. For the
// same reason a SELECT that reads pg_prepared_statements is rewritten to
// read the client's own statements, with its names and texts, and the
// connection's SQL-level ones (preparedview.go); the function behind the
// view, pg_prepared_statement(), still lists the connection's own.
//
// A Bind that fails one of the checks Postgres makes before it looks at
// the schema gets that error rather than 0A000, when kproxy prepares the
// statement again: the statement's existence (26000) and the parameter
// counts (08P01), which kproxy checks, a failed transaction (25P02), where
// the server refuses the Parse, and a named portal still open (42P03) or
// parameter values that do not decode (22P02, 22P03, 22003), which the
// server finds before kproxy's Parse, when kproxy binds the client's
// values into the client's portal on an empty statement of the same
// parameter types. So they come before 0A000 and before the Parse's own
// error (42P01 when the statement's table went), as on Postgres.
//
// No session state crosses clients. Settings and pins are read back from
// the server at the safe point, after a transaction that may have changed
// them: a SET, RESET, set_config or DISCARD in its text, a ParameterStatus
// from the server (whatever changed the setting), or code that may change
// anything (DO, CALL, a call of a volatile user function, loaded from the
// primary). Settings come from pg_settings, plus the session user and the
// role (which pg_settings does not list) and the custom settings named in
// the client's SQL, DO blocks and function bodies; pool.Conn.Sync replays
// them on the next server connection, session user and role in order.
// Pins are read by counting listened channels, advisory locks, temporary
// relations, holdable cursors and SQL prepared statements; a client stays
// pinned only while that state exists. A connection whose transaction ran
// code is reset (RESET SESSION AUTHORIZATION, RESET ROLE, RESET ALL)
// before it serves another client, since code may set custom settings no
// text names. The client goroutine waits while the read-back runs, so
// nothing else is on the connection meanwhile.
//
// # Goroutines
//
// Each client has a goroutine that reads its messages. While a server
// connection is attached, the server's answers are relayed either by that
// same goroutine, when the client has sent a whole batch (up to a Query or
// a Sync) and waits for the answer, which is the common case in
// transaction mode, or by a server goroutine taken from a set kept between
// transactions (workers.go), when the connection stays attached (session
// mode, an open transaction) or the client has more to send (COPY FROM
// STDIN). Handing each transaction from one goroutine to another cost more
// CPU than the rest of kproxy's work on it; bench/cmd/floor-relay measures
// what the goroutine-per-client design itself costs.
//
// # Event loops
//
// With relay_engine "loop" (see loop.go), a few event loops (package
// evloop; one per GOMAXPROCS unless event_loops says otherwise) own the
// plain sockets of transaction-mode clients whenever no goroutine serves
// them. A session is owned either by its loop (session.park is parkLoop)
// or by goroutines, never both: the loop ignores the events of sockets it
// does not own.
//
//   - A client goroutine that finds its session idle (no server connection
//     attached, nothing buffered or owed) gives it to its loop (toLoop) and
//     returns.
//   - The loop reads the client's messages and runs each whole one with the
//     session's own functions, as the client goroutine would: without a
//     server connection (withoutServerLocked), or on an idle one that has
//     the client's settings (pool.Pool.TryAcquire), whose socket then
//     registers with the loop, with the statement bookkeeping of
//     planLocked when it needs no answer from the server first.
//   - It relays the server's answer (answerLocked) and reaches the safe
//     point (readyLocked, mayDetachLocked), where the connection goes back
//     to its pool. A message that uses what an earlier batch redefines
//     waits for that batch's answer (the session stalls).
//   - What a round of the loop produced for a socket goes out in one write
//     at the end of the round. Back-pressure: while too much waits for the
//     client, or its socket is full, the loop stops relaying the server's
//     answer; while too much waits for the server, it stops taking the
//     client's messages.
//   - Everything else is the slow path: the loop hands the session, with
//     its attached server connection, to a goroutine between two messages
//     (handOff). Waiting for a pool slot, dialling, applying settings,
//     routing to replicas and replays, preparing a statement again where
//     its shape must be checked, COPY FROM STDIN, function calls, messages
//     larger than the read buffer, the read-back of session state and a
//     cancel on its way at the safe point, and the end of the session all
//     go there; the goroutine gives the session back once it is idle again.
//
// The loops wait on Go's own poller (an epoll descriptor is readable while
// it has events), so no thread blocks in a system call of theirs and a
// socket event wakes one thread, not two. TLS clients and session mode
// keep the goroutine relay.
//
// # Idle clients
//
// A client that has sent nothing for 0.5 to 1 s is parked (park.go): its
// goroutine hands the socket to one epoll instance (internal/netpark) and
// returns, so an idle client costs its session's heap objects and no
// stack. Its next message wakes it on a fresh goroutine. TLS clients keep
// their goroutine. A server connection attached meanwhile (session mode, an
// open transaction) keeps its own goroutine, which does not depend on the
// client's.
//
// # Routing
//
// In transaction mode with replicas configured, the first message of each
// transaction decides where it runs (see route.go): the classifier's
// ReadOnly verdict, adjusted by comment hints and the kproxy.target
// setting, goes to pool.Cluster.Route. After a transaction that wrote on the
// primary, the safe-point read-back also reads pg_current_wal_insert_lsn(),
// and the client's later reads go only to replicas that have replayed it.
//
// # Errors
//
// Every failure a client sees is an ErrorResponse with a SQLSTATE, built in
// one place (errorResponse): 08006 when a server cannot be reached or is
// lost, 53300 when no server connection frees up within acquire_timeout,
// 28P01 for a failed login, 08P01 for malformed input, 57P01 while shutting
// down. Errors from Postgres pass through unchanged.
//
// # Cancellation
//
// kproxy hands each client its own BackendKeyData. A CancelRequest carrying
// it is forwarded to the server connection running that client's statement,
// and only while one is running. The connection is not released at the safe
// point until the server has taken the forwarded request (bounded by the
// cancel's 5 s timeout): a cancel that comes after the answer finds the
// backend idle, which ignores it, so another client's statement on the same
// server connection is never cancelled. A cancel that comes while the
// client's statement waits for a server connection ends the wait: the
// statement fails with 57014, as a cancelled one does, and nothing of it
// runs.
//
// # What it does not do
//
// It does not choose backends (package pool does), does not route
// session-mode clients to replicas, does not move a transaction that
// turns out to write from a replica to the primary (the replica answers
// 25006), and does not proxy replication connections or GSSAPI encryption.
// One difference from a direct connection remains in transaction mode: a
// Parse kproxy sends in the middle of a transaction (a statement prepared
// again on the connection) makes Postgres advance its command counter, so
// the statements after it see the changes of a writing portal that was
// stopped after some of its rows (Execute with a row limit of INSERT …
// RETURNING) before Postgres would show them. The Parse also takes the
// transaction's snapshot, if it has none yet: where kproxy prepares a
// statement again to describe it, which Postgres' Describe does without
// one, a later SET TRANSACTION ISOLATION LEVEL in that transaction is
// refused (25001), as after a query. And a statement prepared again on
// another connection is parsed anew under the client's search_path: when a
// table has been created since, in a schema before that of the table the
// statement read, with the same name, it now reads the new one (and fails
// with 0A000 if its columns differ), where Postgres keeps the plan it made
// until the old table changes.
//
// Its pg_prepared_statements counts no plans (generic_plans and
// custom_plans are 0, result_types is null), and only a reference to the
// view in the FROM clause of a SELECT or WITH is rewritten.
package proxy
