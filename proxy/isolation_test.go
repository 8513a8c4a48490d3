package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// sessionView is what a client can see of its session's state.
type sessionView struct {
	currentUser, sessionUser string
	fnTenant, doTenant       string // custom settings set inside a function and a DO block
	custom                   string // a custom setting set with SET
	searchPath               string
}

const sessionViewSQL = `SELECT current_user::text, session_user::text,
 coalesce(current_setting('app.iso_fn', true), ''), coalesce(current_setting('app.iso_do', true), ''),
 coalesce(current_setting('app.iso_set', true), ''), current_setting('search_path')`

// isolationKinds are the ways a client changes its session in
// TestNoSessionStateCrossesClients; client c uses kind c % len.
var isolationKinds = []struct {
	name   string
	change func(c int) string // the SQL that changes it
	view   func(c int, v *sessionView)
}{
	{"SET ROLE", func(int) string { return "SET ROLE kp_iso_role" },
		func(_ int, v *sessionView) { v.currentUser = "kp_iso_role" }},
	{"SET SESSION AUTHORIZATION", func(int) string { return "SET SESSION AUTHORIZATION kp_iso_auth" },
		func(_ int, v *sessionView) { v.currentUser, v.sessionUser = "kp_iso_auth", "kp_iso_auth" }},
	{"set_config in a function", func(c int) string { return fmt.Sprintf("SELECT kp_iso_set('c%d')", c) },
		func(c int, v *sessionView) { v.fnTenant = fmt.Sprintf("c%d", c) }},
	{"set_config in a DO block", func(c int) string {
		return fmt.Sprintf("DO $$BEGIN PERFORM set_config('app.iso_do', 'c%d', false); END$$", c)
	}, func(c int, v *sessionView) { v.doTenant = fmt.Sprintf("c%d", c) }},
	{"SET of a custom setting", func(c int) string { return fmt.Sprintf("SET app.iso_set = 'c%d'", c) },
		func(c int, v *sessionView) { v.custom = fmt.Sprintf("c%d", c) }},
	{"search_path", func(c int) string { return fmt.Sprintf("SET search_path = iso_%d, public", c) },
		func(c int, v *sessionView) { v.searchPath = fmt.Sprintf("iso_%d, public", c) }},
}

// TestNoSessionStateCrossesClients runs 20 clients over 2 server
// connections, each changing a different kind of session state, and checks
// that every client sees exactly its own state in every transaction: never
// another client's role, session user or settings, including settings that
// a function or a DO block changed, which no SQL text shows. The same
// clients run directly on Postgres first, so that the expectations are
// Postgres' own.
func TestNoSessionStateCrossesClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, directDSN("postgres", "postgres", ""))
	require.NoError(t, err)
	defer admin.Close(context.Background())
	for _, role := range []string{"kp_iso_role", "kp_iso_auth"} {
		_, err := admin.Exec(ctx, fmt.Sprintf(`DO $$BEGIN CREATE ROLE %s; EXCEPTION WHEN duplicate_object THEN NULL; END$$`, role))
		require.NoError(t, err)
	}
	_, err = admin.Exec(ctx, "DROP FUNCTION IF EXISTS kp_iso_set(text)")
	require.NoError(t, err)

	p := startProxy(t, transactionMode(2))
	// Created through kproxy, and used at once: kproxy must treat the call
	// as code before it has loaded the new function.
	fn, err := pgx.Connect(ctx, p.DSN("postgres", "postgres", ""))
	require.NoError(t, err)
	_, err = fn.Exec(ctx, `CREATE FUNCTION kp_iso_set(v text) RETURNS void LANGUAGE plpgsql VOLATILE
 AS $$BEGIN PERFORM set_config('app.iso_fn', v, false); END$$`)
	require.NoError(t, err)
	fn.Close(ctx)

	for _, target := range []struct {
		name string
		dsn  string
	}{{"direct", directDSN("postgres", "postgres", "")}, {"kproxy", p.DSN("postgres", "postgres", "")}} {
		t.Run(target.name, func(t *testing.T) {
			const clients, rounds = 20, 40
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- isolationClient(ctx, target.dsn, c, rounds)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
		})
	}
	st := p.Cluster.Stats()
	for _, s := range st {
		require.LessOrEqual(t, s.Created, int64(2), "the pool must stay at two server connections")
	}
}

// isolationClient changes its session one way and checks, rounds times,
// in single statements, explicit transactions and prepared statements,
// that it sees its own state and nothing of anyone else's.
func isolationClient(ctx context.Context, dsn string, c, rounds int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	kind := isolationKinds[c%len(isolationKinds)]
	want := sessionView{currentUser: "postgres", sessionUser: "postgres", searchPath: `"$user", public`}
	check := func(round int, how string, q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}, args ...any) error {
		var got sessionView
		if err := q.QueryRow(ctx, sessionViewSQL, args...).Scan(&got.currentUser, &got.sessionUser,
			&got.fnTenant, &got.doTenant, &got.custom, &got.searchPath); err != nil {
			return fmt.Errorf("client %d (%s) round %d: %w", c, kind.name, round, err)
		}
		if got != want {
			return fmt.Errorf("client %d (%s) round %d, %s: sees %+v, want %+v", c, kind.name, round, how, got, want)
		}
		return nil
	}
	if err := check(-1, "before", conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, kind.change(c), pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("client %d (%s): %w", c, kind.name, err)
	}
	kind.view(c, &want)
	for i := range rounds {
		var err error
		switch i % 3 {
		case 0:
			err = check(i, "simple query", conn, pgx.QueryExecModeSimpleProtocol)
		case 1:
			err = check(i, "prepared statement", conn)
		case 2:
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return check(i, "transaction", tx) })
		}
		if err != nil {
			return err
		}
		if i == rounds/2 {
			// Again, by the extended protocol this time.
			if _, err := conn.Exec(ctx, kind.change(c)); err != nil {
				return fmt.Errorf("client %d (%s): %w", c, kind.name, err)
			}
		}
		time.Sleep(time.Duration(rand.IntN(2)) * time.Millisecond)
	}
	return nil
}
