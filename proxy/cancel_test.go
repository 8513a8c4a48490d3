package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// TestCancelsAtAnyMomentReachOnlyTheirOwnClient shares few server
// connections, in both pool modes, between clients whose statements are
// cancelled at random moments (before, during and just after them, so
// across the safe point, and right before the client disconnects) and
// bystanders whose statements must never be cancelled. Every client
// disconnects and connects again now and then, so that in session mode too
// each server connection passes from client to client. Every statement
// must also end: a cancel may not leave a client or a server connection
// waiting.
func TestCancelsAtAnyMomentReachOnlyTheirOwnClient(t *testing.T) {
	duration := 4 * time.Second
	if testing.Short() {
		duration = time.Second
	}
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			edit := transactionMode(1)
			if mode == "session" {
				edit = sessionMode(2)
			}
			p := startProxy(t, edit)
			cancelsReachOnlyTheirClient(t, p.DSN("postgres", "postgres", ""), duration)
		})
	}
}

func cancelsReachOnlyTheirClient(t *testing.T, dsn string, duration time.Duration) {
	var (
		cancelled, victimRan, bystanderRan atomic.Int64
		mu                                 sync.Mutex
		problems                           []string
		wg                                 sync.WaitGroup
	)
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	stop := time.Now().Add(duration)
	// run runs statements until stop, on a connection it replaces now and
	// then, published in current; a statement that does not end within
	// 10 s is a hang.
	run := func(name string, current *atomic.Pointer[pgconn.PgConn], seed uint64, check func(error)) {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 0))
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for time.Now().Before(stop) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if conn == nil {
				var err error
				if conn, err = pgx.Connect(ctx, dsn); err != nil {
					cancel()
					report("%s: connect: %v", name, err)
					return
				}
				current.Store(conn.PgConn())
			}
			sleep := fmt.Sprintf("%.4f", rng.Float64()*0.01)
			var sql string
			switch rng.IntN(3) {
			case 0:
				sql = "SELECT pg_sleep(" + sleep + ")"
			case 1:
				sql = "BEGIN; SELECT pg_sleep(" + sleep + "); COMMIT"
			default:
				sql = "SELECT 1"
			}
			_, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
			if err == nil && rng.IntN(2) == 0 {
				_, err = conn.Exec(ctx, "SELECT pg_sleep($1::float8)", pgx.QueryExecModeExec, sleep)
			}
			if err != nil && conn.PgConn().TxStatus() == 'E' {
				// As on Postgres, a cancel inside BEGIN … COMMIT leaves
				// the transaction failed.
				_, err2 := conn.Exec(ctx, "ROLLBACK")
				if err2 != nil {
					report("%s: ROLLBACK: %v", name, err2)
				}
			}
			hung := ctx.Err() != nil
			cancel()
			if hung {
				report("%s: a statement did not end within 10 s: %v", name, err)
				return
			}
			check(err)
			if rng.IntN(4) == 0 {
				// Disconnect, perhaps with a cancel still on its way.
				conn.Close(context.Background())
				conn = nil
			}
		}
	}
	for i := range 2 {
		var victim, bystander atomic.Pointer[pgconn.PgConn]
		wg.Add(3)
		go run(fmt.Sprintf("victim %d", i), &victim, uint64(i), func(err error) {
			victimRan.Add(1)
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
			case errors.As(err, &pgErr) && pgErr.Code == "57014":
				cancelled.Add(1)
			default:
				report("victim %d: %v", i, err)
			}
		})
		go run(fmt.Sprintf("bystander %d", i), &bystander, uint64(100+i), func(err error) {
			bystanderRan.Add(1)
			if err != nil {
				report("bystander %d: %v", i, err)
			}
		})
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(200+i), 0))
			for time.Now().Before(stop) {
				time.Sleep(time.Duration(rng.IntN(30000)) * time.Microsecond)
				pc := victim.Load()
				if pc == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := pc.CancelRequest(ctx)
				cancel()
				if err != nil {
					report("cancel request for victim %d: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("victims ran %d statements, %d of them cancelled; bystanders ran %d", victimRan.Load(), cancelled.Load(), bystanderRan.Load())
	require.Empty(t, problems)
	require.Positive(t, cancelled.Load(), "no victim statement was cancelled: the test did not exercise cancels")
	require.Positive(t, bystanderRan.Load())
}

// A client whose statement waits for a server connection, all of them
// busy, and that sends a cancel request gets the error of a cancelled
// statement at once, by either protocol, rather than waiting for a
// connection to run it; nothing of it runs, and the client goes on.
func TestACancelEndsTheWaitForAServerConnection(t *testing.T) {
	p := startProxy(t, transactionMode(1))
	dsn := p.DSN("postgres", "postgres", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder := connect(t, dsn, pgx.QueryExecModeExec)
	_, err := holder.Exec(ctx, "DROP TABLE IF EXISTS cancel_wait_t; CREATE TABLE cancel_wait_t (a int)")
	require.NoError(t, err)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			waiter := connect(t, dsn, mode)
			_, err := holder.Exec(ctx, "BEGIN")
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() {
				_, err := waiter.Exec(ctx, "INSERT INTO cancel_wait_t VALUES ($1)", 1)
				done <- err
			}()
			time.Sleep(200 * time.Millisecond) // the waiter is queued for the one connection
			start := time.Now()
			require.NoError(t, waiter.PgConn().CancelRequest(ctx))
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the cancelled statement still waits for a server connection")
			}
			t.Logf("answered %v after the cancel", time.Since(start))
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			require.Equal(t, "57014", pgErr.Code)
			_, err = holder.Exec(ctx, "COMMIT")
			require.NoError(t, err)
			var n int
			require.NoError(t, waiter.QueryRow(ctx, "SELECT count(*) FROM cancel_wait_t").Scan(&n))
			require.Zero(t, n, "the cancelled INSERT ran")
		})
	}
}
