// Package pool is kproxy's backend side: server connections, the pools that
// hold them, and the cluster of pools for the primary and its replicas.
//
// # Server connections
//
// A Conn is opened with pgconn, which handles TLS, authentication (SCRAM,
// md5, cleartext) and the startup exchange, and then hijacked: from there on
// kproxy reads and writes raw protocol frames on it. A Conn remembers the
// server's last ParameterStatus values and the session settings kproxy
// applied to it (Sync), so a client's settings are re-applied only when they
// differ.
//
// # Pools
//
// A Pool holds the connections of one (backend, database, user). Acquire
// hands out an idle connection (most recently used first), opens one while
// the pool is below max_connections, or waits in line up to acquire_timeout
// (ErrAcquireTimeout). Release hands the connection to the next waiter or
// back to the idle list; broken and expired connections are closed instead.
// A maintenance goroutine pre-warms, keeps min_connections open, closes
// connections past idle_timeout or their jittered max_lifetime, and pings
// idle connections every health_check_period. SetLimits changes the sizes at
// run time.
//
// # Concurrency
//
// Pool and Cluster are safe for concurrent use; their locks guard the idle
// list, the waiter queue and the counts, never I/O. A Conn belongs to one
// holder at a time and is not safe for concurrent use beyond one reading
// and one writing goroutine.
//
// # What it does not do
//
// It never speaks to clients, and it does not decide which statements go
// where beyond the primary pool (routing to replicas comes with the router).
package pool
