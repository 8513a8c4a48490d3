package proxy_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestDDLUnderACachedStatementWorkload runs pgx clients in
// QueryExecModeCacheStatement (pgx's default: every statement prepared once
// per client and reused) over three server connections, while the table
// they use gets ALTER TABLE … ADD COLUMN and is dropped and created again
// under the same name. Their statements name their columns, so on Postgres
// none of them fails; through kproxy none may fail either. The same
// workload runs directly on Postgres first.
func TestDDLUnderACachedStatementWorkload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startProxy(t, transactionMode(3))
	for _, target := range []struct{ name, dsn, table string }{
		{"direct", directDSN("postgres", "postgres", ""), "ddl_direct"},
		{"kproxy", p.DSN("postgres", "postgres", ""), "ddl_kproxy"},
	} {
		t.Run(target.name, func(t *testing.T) {
			ran, errs := ddlWorkload(ctx, t, target.dsn, target.table)
			t.Logf("%s: %d statements, %d errors", target.name, ran, len(errs))
			require.Empty(t, errs)
			require.Greater(t, ran, int64(1000))
		})
	}
}

// ddlWorkload runs the clients against table on dsn during a series of DDL
// changes made directly on the primary, and returns the statements run and
// the errors seen.
func ddlWorkload(ctx context.Context, t *testing.T, dsn, table string) (int64, []error) {
	admin, err := pgx.Connect(ctx, directDSN("postgres", "postgres", ""))
	require.NoError(t, err)
	defer admin.Close(context.Background())
	create := fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int PRIMARY KEY, v text); INSERT INTO %[1]s SELECT g, 'v' FROM generate_series(1, 100) g", table)
	_, err = admin.Exec(ctx, create)
	require.NoError(t, err)

	const clients = 8
	var (
		ran  atomic.Int64
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	stop := make(chan struct{})
	for c := range clients {
		conn, err := pgx.Connect(ctx, dsn)
		require.NoError(t, err)
		defer conn.Close(context.Background())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if i%4 == 3 {
					_, err = conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v", table), 1000+c*100000+i, "w")
				} else {
					var id int
					var v string
					err = conn.QueryRow(ctx, fmt.Sprintf("SELECT id, v FROM %s WHERE id = $1", table), 1+i%100).Scan(&id, &v)
					if err == pgx.ErrNoRows {
						err = nil // between a DROP and the refill
					}
				}
				ran.Add(1)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("client %d: %w", c, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range 6 {
		time.Sleep(300 * time.Millisecond)
		var ddl string
		if i%2 == 0 {
			ddl = fmt.Sprintf("ALTER TABLE %s ADD COLUMN c%d int", table, i)
		} else {
			// In one transaction, as a migration would: the clients wait
			// for its lock and then find the new table.
			ddl = fmt.Sprintf("BEGIN; DROP TABLE %[1]s; CREATE TABLE %[1]s (id int PRIMARY KEY, v text); INSERT INTO %[1]s SELECT g, 'v' FROM generate_series(1, 100) g; COMMIT", table)
		}
		_, err := admin.Exec(ctx, ddl)
		require.NoError(t, err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	return ran.Load(), errs
}
