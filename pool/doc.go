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
// differ; Sync undoes and applies the session user and the role around the
// other settings. A Conn whose holder ran code that may have left state no
// settings map describes (SetStateOwner) reports NeedsReset for any other
// holder, which then calls ResetSession. The settings a pool's connections
// applied without error are remembered (ValidSettings), so that a login
// whose startup parameters no connection has applied yet tries them first.
// UserFunctions lists the primary's volatile user functions and the custom
// settings their bodies set.
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
// # Cluster and routing
//
// A Cluster holds the pools of the primary and each replica. Route picks
// where a transaction runs: a read goes to a healthy replica that has
// replayed the caller's last write (power of two choices on in-flight
// transactions and latency), everything else to the primary. A monitor
// measures each replica's health, replay position and lag, and ejects and
// readmits replicas. The adaptive sizer shares each backend's connection
// budget among its pools by demand (adaptive.go, sizer.go), and the
// workload tracker learns statement patterns (workload.go).
//
// # In-process clients
//
// A DB runs statements for Go code in the same process (the workflow
// runtime, library mode) through the same classifier, router, pools and
// server statements as network clients, with no socket in between: a
// Session keeps read-your-writes like one client connection, and Tx runs a
// transaction on one primary connection. Server statements are named by
// StatementName, as the proxy names its clients' statements, so both share
// the statements prepared on a connection.
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
// It never speaks to network clients: package proxy does, using Route and
// the pools.
package pool
