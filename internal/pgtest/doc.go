// Package pgtest gives integration tests a real PostgreSQL primary, a
// streaming replica of it and a Redis.
//
// # Lifecycle
//
// A test package that needs the cluster runs it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
//
// and its tests read the addresses from [Get]. There is one cluster per test
// package, shared by all its tests; tests must not stop it and should use
// their own tables or databases so they can run in parallel.
//
// When KPROXY_TEST_PRIMARY, KPROXY_TEST_REPLICA and KPROXY_TEST_REDIS are
// all set (host:port each, as printed by `scripts/pgcluster env DIR`), Run
// uses that cluster and leaves it running. scripts/test does this so that
// `go test ./...` starts one cluster for every package. Otherwise Run starts
// a fresh cluster with scripts/pgcluster in a temporary directory on free
// ports, and stops and removes it after the tests.
//
// # The cluster
//
// See scripts/pgcluster. The superuser is postgres, trusted without a
// password. Two roles log in with passwords over TCP: [ScramUser] with a
// SCRAM secret and [MD5User] with an MD5 secret. Replication is asynchronous:
// call [Cluster.WaitReplicaCaughtUp] before reading on the replica what was
// just written on the primary.
//
// # What it does not do
//
// It does not reset data between tests, and it cannot stop the cluster when
// the test binary is killed (for example by -timeout): the servers of a
// cluster Run started then keep running until stopped with
// `scripts/pgcluster stop DIR`.
package pgtest
