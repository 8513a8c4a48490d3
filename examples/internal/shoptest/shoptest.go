// Package shoptest gives the examples' tests a shop database of their own
// on the test cluster (internal/pgtest), so that they neither see nor
// disturb the tables of other tests.
package shoptest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/examples"
	"github.com/kproxy/kproxy/internal/pgtest"
	"github.com/kproxy/kproxy/pool"
)

// Shop is a shop database on the test cluster.
type Shop struct {
	// DB is a library-mode client on the primary and the replica.
	DB *pool.DB
	// Config is DB's configuration; it must not be modified.
	Config *config.Config

	admin *pgx.Conn // to the primary, bypassing kproxy
}

// Open returns the shop in database, which it creates when missing, with
// the shop's tables (examples.CreateSchema) and a DB whose pools hold up to
// maxConns connections per backend. Everything is closed when the test
// ends.
func Open(t testing.TB, database string, maxConns int) *Shop {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := pgtest.Get()
	root := c.PrimaryConn(t)
	var exists bool
	require.NoError(t, root.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, database).Scan(&exists))
	if !exists {
		_, err := root.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{database}.Sanitize())
		require.NoError(t, err)
	}
	// The replica must know the database before reads go there.
	require.NoError(t, c.WaitReplicaCaughtUp(ctx))

	cfg := config.Default()
	var err error
	cfg.Primary, err = config.ParseBackend(c.PrimaryAddr)
	require.NoError(t, err)
	replica, err := config.ParseBackend(c.ReplicaAddr)
	require.NoError(t, err)
	cfg.Replicas = []config.Backend{replica}
	cfg.BackendTLS.SSLMode = "disable"
	cfg.Routing.CheckPeriod = 50 * time.Millisecond
	cfg.Pool.MaxConnections = maxConns
	cfg.Pool.AcquireTimeout = 30 * time.Second
	require.NoError(t, cfg.Validate())
	db, err := pool.OpenDB(ctx, &cfg, zap.NewNop(), database, pgtest.Superuser)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	require.NoError(t, examples.CreateSchema(ctx, db))

	admin, err := pgx.Connect(ctx, c.DSN(c.PrimaryAddr, database, pgtest.Superuser))
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	return &Shop{DB: db, Config: &cfg, admin: admin}
}

// Exec runs sql on the primary, bypassing kproxy, and waits until the
// replica has replayed it.
func (s *Shop) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := s.admin.Exec(ctx, sql, args...)
	require.NoError(t, err)
	require.NoError(t, pgtest.Get().WaitReplicaCaughtUp(ctx))
}

// Int returns the single integer sql returns on the primary.
func (s *Shop) Int(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	require.NoError(t, s.admin.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// Text returns the single value sql returns on the primary, as text.
func (s *Shop) Text(t testing.TB, sql string, args ...any) string {
	t.Helper()
	var v string
	require.NoError(t, s.admin.QueryRow(context.Background(), sql, args...).Scan(&v))
	return v
}
