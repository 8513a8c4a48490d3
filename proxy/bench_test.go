package proxy_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// benchTargets are where the benchmarks below connect: Postgres directly,
// as the baseline, and kproxy in each pool mode.
func benchTargets(b *testing.B) []struct {
	name string
	dsn  string
} {
	tx := startProxy(b, transactionMode(4))
	ses := startProxy(b, sessionMode(4))
	return []struct {
		name string
		dsn  string
	}{
		{"direct", directDSN("postgres", "postgres", "")},
		{"kproxy-tx", tx.DSN("postgres", "postgres", "")},
		{"kproxy-session", ses.DSN("postgres", "postgres", "")},
	}
}

// BenchmarkRelayRows measures rows relayed per second through one session:
// a query returning 10,000 rows of about 100 bytes, read to the end.
func BenchmarkRelayRows(b *testing.B) {
	const rows = 10000
	sql := fmt.Sprintf("SELECT i, repeat('x', 90) FROM generate_series(1, %d) i", rows)
	for _, tgt := range benchTargets(b) {
		b.Run(tgt.name, func(b *testing.B) {
			ctx := context.Background()
			conn, err := pgconn.Connect(ctx, tgt.dsn)
			require.NoError(b, err)
			defer conn.Close(ctx)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				rr := conn.ExecParams(ctx, sql, nil, nil, nil, nil)
				n := 0
				for rr.NextRow() {
					n++
				}
				if _, err := rr.Close(); err != nil || n != rows {
					b.Fatalf("%d rows, %v", n, err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkPreparedSelect measures one round trip of a prepared statement
// (pgx's default statement cache: Bind, Execute, Sync), the path where
// kproxy maps the client's statement to the server connection's in
// transaction mode.
func BenchmarkPreparedSelect(b *testing.B) {
	for _, tgt := range benchTargets(b) {
		b.Run(tgt.name, func(b *testing.B) {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, tgt.dsn)
			require.NoError(b, err)
			defer conn.Close(ctx)
			var v int
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
					b.Fatalf("got %d, %v", v, err)
				}
			}
		})
	}
}
