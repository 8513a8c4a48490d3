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
// point: a ReadyForQuery with status idle after the client's last Sync or
// Query, with no extended-protocol batch open. A statement that leaves
// session state on the server (see classify.SessionEffect), or a named
// prepared statement, pins the client to its server connection for the rest
// of its session, with the reason counted in Stats.
//
// # Relay
//
// Messages are framed, not decoded: each is forwarded as the raw bytes it
// arrived as, and writes are flushed only when no further input is already
// buffered, so a pipelined batch goes out in one write. Only the messages
// kproxy acts on (Query and Parse text, ReadyForQuery status, ParameterStatus)
// are looked into.
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
// and only while one is running, so another client's statement on the same
// server connection is never cancelled.
//
// # What it does not do
//
// It does not choose backends (package pool does) and does not proxy
// replication connections or GSSAPI encryption.
package proxy
