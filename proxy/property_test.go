package proxy_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgtest"
)

// The property test. Many clients each play their own random mix of the
// extended and the simple protocol: named and unnamed statements with
// declared and inferred parameter types, text and binary parameters and
// results, portals run in steps, Describe, Close, Flush, several Syncs in
// one batch, DEALLOCATE and DISCARD, errors in the middle of a pipeline,
// transactions committed and rolled back, savepoints, settings,
// search_path, and DDL on their own tables and on tables all clients share.
// Each client plays every batch on a direct connection to one database and
// through kproxy in transaction mode, over few server connections, to
// another database prepared the same way; the two answers must be
// identical, message for message, and so must the tables at the end.
//
// Batches that touch the shared tables run under one lock (a transaction
// that touched them holds it until it ends), so that both databases see
// the shared tables change in the same order; the rest runs concurrently.
//
// KPROXY_PROPERTY_DURATION sets how long the random run lasts (default
// 20 s, 5 s with -short) and KPROXY_PROPERTY_SEED its seed (default: from
// the clock). Before it, each seed in testdata/property-seeds.txt is
// replayed for its number of batches per client: add the seed of any
// failure there.

const (
	propClients     = 12
	propServerConns = 3
	propDirectDB    = "kproxy_prop_direct"
	propProxyDB     = "kproxy_prop_proxy"
)

func TestRandomProtocolMixesGetPostgresAnswersThroughTransactionMode(t *testing.T) {
	for _, s := range committedPropertySeeds(t) {
		t.Run(fmt.Sprintf("seed %d", s.seed), func(t *testing.T) {
			runProperty(t, s.seed, s.batches, 0)
		})
	}
	duration := 20 * time.Second
	if testing.Short() {
		duration = 5 * time.Second
	}
	if v := os.Getenv("KPROXY_PROPERTY_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "KPROXY_PROPERTY_DURATION")
		duration = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("KPROXY_PROPERTY_HISTORY"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "KPROXY_PROPERTY_HISTORY")
		propHistory = n
	}
	if v := os.Getenv("KPROXY_PROPERTY_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "KPROXY_PROPERTY_SEED")
		seed = s
	}
	t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
		runProperty(t, seed, 0, duration)
	})
}

type propSeed struct {
	seed    uint64
	batches int
}

// committedPropertySeeds reads testdata/property-seeds.txt: a seed and a
// number of batches per client a line, then an optional comment after #.
func committedPropertySeeds(t *testing.T) []propSeed {
	f, err := os.Open("testdata/property-seeds.txt")
	require.NoError(t, err)
	defer f.Close()
	var seeds []propSeed
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		require.Len(t, fields, 2, "testdata/property-seeds.txt: %q", sc.Text())
		seed, err := strconv.ParseUint(fields[0], 10, 64)
		require.NoError(t, err)
		batches, err := strconv.Atoi(fields[1])
		require.NoError(t, err)
		seeds = append(seeds, propSeed{seed, batches})
	}
	require.NoError(t, sc.Err())
	return seeds
}

// runProperty prepares both databases, starts kproxy and plays
// propClients clients, each for batches batches or until duration has
// passed.
func runProperty(t *testing.T, seed uint64, batches int, duration time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, db := range []string{propDirectDB, propProxyDB} {
		preparePropertyDB(t, db)
	}
	p := startProxy(t, func(c *config.Config) {
		transactionMode(propServerConns)(c)
		c.Pool.MaxPreparedStatements = 12 // so that statements are evicted and prepared again
		// A long run on a loaded machine may wait for a new server
		// connection longer than the default: that is not a mismatch.
		c.Pool.ConnectTimeout = 30 * time.Second
		c.Pool.AcquireTimeout = 60 * time.Second
	})

	var (
		shared   sync.Mutex
		failed   atomic.Bool
		nBatches atomic.Int64
		nMsgs    atomic.Int64
		failedAt atomic.Int64 // the batch that failed, for the seed line
		wg       sync.WaitGroup
		errs     = make(chan error, propClients)
	)
	deadline := time.Now().Add(duration)
	for c := range propClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc := &propClient{c: c, rng: rand.New(rand.NewPCG(seed, uint64(c))), status: 'I',
				stmts: map[string]propText{}, shared: &shared, portalWrites: map[string]bool{}, unsure: map[string]bool{}}
			if err := pc.connect(p); err != nil {
				errs <- err
				failed.Store(true)
				return
			}
			if os.Getenv("KPROXY_PROPERTY_CHECK_TABLES") != "" {
				for k, db := range []string{propDirectDB, propProxyDB} {
					pc.check[k] = connect(t, directDSN(pgtest.Superuser, db, ""), pgx.QueryExecModeExec)
				}
			}
			defer pc.close()
			for i := 0; ; i++ {
				if failed.Load() || ctx.Err() != nil || (batches > 0 && i >= batches) || (batches == 0 && time.Now().After(deadline)) {
					break
				}
				b := pc.next()
				if err := pc.play(b, i); err != nil {
					errs <- fmt.Errorf("seed %d, client %d, batch %d: %w", seed, c, i, err)
					failedAt.Store(int64(i))
					failed.Store(true)
					break
				}
				nBatches.Add(1)
				nMsgs.Add(int64(len(b.msgs)))
			}
			pc.release()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !failed.Load() {
		requireSameTables(t)
	}
	t.Logf("seed %d: %d clients over %d server connections played %d batches of %d messages, each directly and through kproxy",
		seed, propClients, propServerConns, nBatches.Load(), nMsgs.Load())
	if t.Failed() {
		t.Logf("add the line %q to testdata/property-seeds.txt", fmt.Sprintf("%d %d", seed, max(batches, int(failedAt.Load())+50)))
	}
}

// preparePropertyDB creates db afresh with the tables the clients use.
func preparePropertyDB(t *testing.T, db string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := connect(t, directDSN(pgtest.Superuser, "postgres", ""), pgx.QueryExecModeExec)
	_, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+db)
	require.NoError(t, err)
	conn := connect(t, directDSN(pgtest.Superuser, db, ""), pgx.QueryExecModeExec)
	var sb strings.Builder
	sb.WriteString(`CREATE TABLE s0 (id int PRIMARY KEY, v text DEFAULT 'v');
		INSERT INTO s0 (id) SELECT generate_series(1, 5);
		CREATE TABLE s1 (id int PRIMARY KEY, w int);
		INSERT INTO s1 SELECT i, i * 10 FROM generate_series(1, 3) i;
		CREATE TABLE u (a int); INSERT INTO u VALUES (1), (2);`)
	for c := range propClients {
		fmt.Fprintf(&sb, `CREATE TABLE t%[1]d (id int PRIMARY KEY, v text);
			INSERT INTO t%[1]d SELECT i, 'r' || i FROM generate_series(1, 4) i;
			CREATE SCHEMA sp%[1]d; CREATE TABLE sp%[1]d.u (b text, c int); INSERT INTO sp%[1]d.u VALUES ('c%[1]d', %[1]d);`, c)
	}
	_, err = conn.Exec(ctx, sb.String())
	require.NoError(t, err)
}

// requireSameTables compares every table of both databases.
func requireSameTables(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dump := func(db string) string {
		conn := connect(t, directDSN(pgtest.Superuser, db, ""), pgx.QueryExecModeExec)
		var sb strings.Builder
		tables := []string{"s0", "s1", "u"}
		for c := range propClients {
			tables = append(tables, fmt.Sprintf("t%d", c), fmt.Sprintf("sp%d.u", c))
		}
		for _, table := range tables {
			var exists bool
			require.NoError(t, conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists))
			if !exists {
				fmt.Fprintf(&sb, "%s: none\n", table)
				continue
			}
			var rows string
			require.NoError(t, conn.QueryRow(ctx, fmt.Sprintf("SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), '') FROM %s x", table)).Scan(&rows))
			fmt.Fprintf(&sb, "%s: %s\n", table, rows)
		}
		return sb.String()
	}
	require.Equal(t, dump(propDirectDB), dump(propProxyDB), "the tables at the end")
}

// A propText is a statement the generator may prepare: its text for
// client c, the kinds of its parameters ('i' integer, 't' text), the
// parameter types Parse may declare, and whether it reads or changes the
// shared tables.
type propText struct {
	sql    func(c int, r *rand.Rand) string
	params string
	types  [][]uint32 // nil entries mean none declared
	shared bool
	// writes: a DML statement that returns rows. Its portal is run to
	// completion at once: see suspends.
	writes bool
}

const (
	oidInt4 = 23
	oidInt8 = 20
	oidText = 25
)

func fixed(s string) func(int, *rand.Rand) string { return func(int, *rand.Rand) string { return s } }

func own(format string) func(int, *rand.Rand) string {
	return func(c int, _ *rand.Rand) string { return fmt.Sprintf(format, c) }
}

// A custom setting someone set on a server connection reads as empty rather
// than NULL there ever after, RESET or not (Postgres cannot drop its
// placeholder), so the texts read app.k with coalesce: a client that never
// set it may find it empty through a pooler.
var propTexts = []propText{
	{sql: own("SELECT id, v FROM t%d WHERE id > $1 ORDER BY id LIMIT 5"), params: "i", types: [][]uint32{nil, {oidInt4}, {oidInt8}}},
	{sql: own("SELECT * FROM t%d ORDER BY id LIMIT 3")},
	{sql: own("INSERT INTO t%d (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING id, v"), params: "it", types: [][]uint32{nil, {oidInt4, oidText}}, writes: true},
	{sql: own("UPDATE t%d SET v = v || $1 WHERE id = $2"), params: "ti"},
	{sql: own("DELETE FROM t%d WHERE id = $1"), params: "i", types: [][]uint32{nil, {oidInt4}}},
	{sql: fixed("SELECT $1::int + $2::int"), params: "ii", types: [][]uint32{nil, {oidInt4, oidInt4}}},
	{sql: fixed("SELECT $1"), params: "i", types: [][]uint32{{oidInt4}, {oidText}, {oidInt8}}},
	{sql: fixed("SELECT 10 / ($1::int + (random() * 0)::int)"), params: "i"},
	{sql: fixed("SELECT * FROM u ORDER BY 1")},
	{sql: fixed("SELECT generate_series(1, $1::int) AS n"), params: "i", types: [][]uint32{nil, {oidInt4}}},
	{sql: own("SELECT * FROM nosuch%d")},
	{sql: fixed("SELECT current_setting('application_name'), current_setting('statement_timeout'), coalesce(current_setting('app.k', true), '')")},
	{sql: func(c int, r *rand.Rand) string {
		return fmt.Sprintf("ALTER TABLE t%d ADD COLUMN IF NOT EXISTS x%d int DEFAULT 7", c, r.IntN(3))
	}},
	{sql: func(c int, r *rand.Rand) string {
		return fmt.Sprintf("ALTER TABLE t%d DROP COLUMN IF EXISTS x%d", c, r.IntN(3))
	}},
	{sql: fixed("SELECT * FROM s0 ORDER BY id LIMIT 4"), shared: true},
	{sql: fixed("SELECT id FROM s0 WHERE id < $1 ORDER BY id"), params: "i", types: [][]uint32{nil, {oidInt4}}, shared: true},
	{sql: fixed("INSERT INTO s0 (id) VALUES ($1) ON CONFLICT DO NOTHING"), params: "i", shared: true},
	{sql: fixed("DELETE FROM s0 WHERE id > $1"), params: "i", shared: true},
	{sql: fixed("SELECT * FROM s1 ORDER BY 1 LIMIT 4"), shared: true},
	{sql: fixed("INSERT INTO s1 (id) VALUES ($1) ON CONFLICT DO NOTHING"), params: "i", shared: true},
	{sql: func(_ int, r *rand.Rand) string {
		return fmt.Sprintf("ALTER TABLE s0 ADD COLUMN IF NOT EXISTS c%d text DEFAULT 'x'", r.IntN(3))
	}, shared: true},
	{sql: func(_ int, r *rand.Rand) string {
		return fmt.Sprintf("ALTER TABLE s0 DROP COLUMN IF EXISTS c%d", r.IntN(3))
	}, shared: true},
	{sql: fixed("DROP TABLE IF EXISTS s1"), shared: true},
	{sql: func(_ int, r *rand.Rand) string {
		// In public, whatever the search_path: see "What it does not
		// do" in doc.go for a table that shadows another.
		return "CREATE TABLE IF NOT EXISTS public.s1 (id int PRIMARY KEY, w " + []string{"int", "text", "bool"}[r.IntN(3)] + ")"
	}, shared: true},
}

// propSimple are the simple queries the generator sends, for client c;
// shared ones touch the shared tables.
var propSimple = []struct {
	sql    func(c int, r *rand.Rand) string
	shared bool
}{
	{sql: fixed("BEGIN")},
	{sql: fixed("BEGIN ISOLATION LEVEL REPEATABLE READ")},
	{sql: fixed("COMMIT")},
	{sql: fixed("ROLLBACK")},
	{sql: fixed("SAVEPOINT a")},
	{sql: fixed("ROLLBACK TO SAVEPOINT a")},
	{sql: fixed("RELEASE SAVEPOINT a")},
	{sql: own("SELECT * FROM t%d ORDER BY id LIMIT 3; SELECT 1")},
	{sql: func(c int, r *rand.Rand) string {
		return fmt.Sprintf("INSERT INTO t%d (id, v) VALUES (%d, 'q') ON CONFLICT (id) DO NOTHING", c, r.IntN(20))
	}},
	{sql: fixed("SELECT 1; SELECT 1/0; SELECT 2")},
	{sql: fixed("")},
	{sql: func(_ int, r *rand.Rand) string { return "DEALLOCATE " + propNames[r.IntN(len(propNames))] }},
	{sql: fixed("DEALLOCATE ALL")},
	{sql: fixed("DEALLOCATE PREPARE nosuch")},
	{sql: fixed("DISCARD ALL")},
	{sql: func(c int, r *rand.Rand) string { return fmt.Sprintf("SET application_name = 'c%d_%d'", c, r.IntN(5)) }},
	{sql: func(c int, r *rand.Rand) string { return fmt.Sprintf("SET statement_timeout = '%ds'", 10+c) }},
	{sql: fixed("RESET statement_timeout")},
	{sql: fixed("SET LOCAL statement_timeout = '9s'")},
	{sql: own("SET search_path = sp%d, public")},
	{sql: fixed("SET search_path = public")},
	{sql: fixed("SHOW search_path")},
	{sql: func(c int, r *rand.Rand) string {
		return fmt.Sprintf("SELECT set_config('app.k', '%d', false)", c*10+r.IntN(10))
	}},
	{sql: own("DO $$ BEGIN PERFORM set_config('app.k', 'do%d', false); END $$")},
	{sql: fixed("SELECT coalesce(current_setting('app.k', true), ''), current_setting('application_name'), current_setting('search_path')")},
	{sql: fixed("SELECT * FROM s0 ORDER BY id LIMIT 4"), shared: true},
	{sql: fixed("DROP TABLE IF EXISTS s1; CREATE TABLE public.s1 (id int PRIMARY KEY, w text)"), shared: true},
	{sql: func(_ int, r *rand.Rand) string {
		return fmt.Sprintf("ALTER TABLE s0 ADD COLUMN IF NOT EXISTS c%d text DEFAULT 'x'", r.IntN(3))
	}, shared: true},
}

// Statement names: pr* only ever name statements of texts that leave the
// shared tables alone, sh* any text; the unnamed statement may hold either.
var propNames = []string{"pr0", "pr1", "pr2", "sh0", "sh1", "sh2"}

type propBatch struct {
	msgs   []pgproto3.FrontendMessage
	shared bool
	rfqs   int
	parsed []string // the statement names its Parses define
}

type propClient struct {
	c      int
	rng    *rand.Rand
	direct *propConn
	proxy  *propConn
	shared *sync.Mutex
	// holding: the client holds shared, from a batch that touched the
	// shared tables until its transaction ends.
	holding bool
	status  byte // the transaction status of the last ReadyForQuery
	// stmts is what the client believes it has prepared (it does not
	// check: a Parse may have failed or been skipped).
	stmts map[string]propText
	// unnamedShared: the unnamed statement may hold a shared text.
	unnamedShared bool
	// history is the client's latest batches and their answers, for the
	// report of a failure.
	history []string
	// check holds a direct connection to each database when
	// KPROXY_PROPERTY_CHECK_TABLES is set: the client's own table is then
	// compared after every batch that ends its transaction, which finds
	// the batch whose effect differs when every answer matched.
	check [2]*pgx.Conn
	// portalWrites: the portal was last bound to a statement with writes,
	// as the client believes.
	portalWrites map[string]bool
	// unsure holds the names whose last Parse was in a batch that failed
	// somewhere: the server may have skipped it, and the name may still
	// stand for an earlier text.
	unsure map[string]bool
	// described: the transaction block has sent a Describe of a
	// statement, which kproxy may answer by preparing it again, taking the
	// transaction's snapshot (see describes).
	described bool
}

type propConn struct {
	nc net.Conn
	fe *pgproto3.Frontend
}

func (pc *propClient) connect(p *testProxy) error {
	var err error
	if pc.direct, err = propDial(pgtest.Get().PrimaryAddr, propDirectDB); err != nil {
		return err
	}
	pc.proxy, err = propDial(p.Addr, propProxyDB)
	return err
}

func propDial(addr, db string) (*propConn, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	pc := &propConn{nc: nc, fe: pgproto3.NewFrontend(nc, nc)}
	pc.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": pgtest.Superuser, "database": db}})
	if _, err := pc.exchange(1); err != nil {
		nc.Close()
		return nil, fmt.Errorf("login to %s: %w", addr, err)
	}
	return pc, nil
}

// exchange flushes what was sent and reads the normalised answer up to the
// rfqs-th ReadyForQuery.
func (pc *propConn) exchange(rfqs int) ([]string, error) {
	if err := pc.nc.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return nil, err
	}
	if err := pc.fe.Flush(); err != nil {
		return nil, err
	}
	var answer []string
	for rfqs > 0 {
		msg, err := pc.fe.Receive()
		if err != nil {
			return answer, err
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			rfqs--
		}
		if line, keep := normalizeBackend(msg); keep {
			answer = append(answer, line)
		}
	}
	return answer, nil
}

func (pc *propClient) close() {
	for _, conn := range []*propConn{pc.direct, pc.proxy} {
		if conn != nil {
			conn.fe.Send(&pgproto3.Terminate{})
			_ = conn.fe.Flush()
			conn.nc.Close()
		}
	}
}

func (pc *propClient) release() {
	if pc.holding {
		pc.holding = false
		pc.shared.Unlock()
	}
}

// play runs b on both connections and compares the answers.
func (pc *propClient) play(b propBatch, i int) error {
	if b.shared && !pc.holding {
		pc.shared.Lock()
		pc.holding = true
	}
	var answers [2][]string
	for k, conn := range []*propConn{pc.direct, pc.proxy} {
		for _, m := range b.msgs {
			conn.fe.Send(m)
		}
		var err error
		if answers[k], err = conn.exchange(b.rfqs); err != nil {
			return fmt.Errorf("%s: %w\nsent:\n%s\nanswer so far:\n%s", []string{"directly", "through kproxy"}[k], err,
				describeBatch(b), strings.Join(answers[k], "\n"))
		}
	}
	if d, k := strings.Join(answers[0], "\n"), strings.Join(answers[1], "\n"); d != k {
		return fmt.Errorf("answers differ\nsent:\n%s\ndirectly:\n%s\nthrough kproxy:\n%s\nthe client's batches before:\n%s",
			describeBatch(b), d, k, strings.Join(pc.history, "\n"))
	}
	pc.history = append(pc.history, fmt.Sprintf("batch %d:\n%s  answer:\n    %s", i, describeBatch(b), strings.Join(answers[0], "\n    ")))
	if len(pc.history) > propHistory {
		pc.history = pc.history[1:]
	}
	failed := false
	for _, line := range answers[0] {
		failed = failed || strings.HasPrefix(line, "ErrorResponse")
	}
	for _, n := range b.parsed {
		if failed {
			pc.unsure[n] = true
		} else {
			delete(pc.unsure, n)
		}
	}
	last := answers[0][len(answers[0])-1]
	pc.status = last[len(last)-1]
	if pc.status == 'I' {
		pc.described = false
		pc.release()
		if pc.check[0] != nil {
			var rows [2]string
			for k, conn := range pc.check {
				q := fmt.Sprintf("SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), '') FROM t%d x", pc.c)
				if err := conn.QueryRow(context.Background(), q).Scan(&rows[k]); err != nil {
					rows[k] = err.Error()
				}
			}
			if rows[0] != rows[1] {
				return fmt.Errorf("table t%d differs after the batch\ndirectly: %s\nthrough kproxy: %s\nthe client's batches:\n%s",
					pc.c, rows[0], rows[1], strings.Join(pc.history, "\n"))
			}
		}
	}
	return nil
}

func describeBatch(b propBatch) string {
	var sb strings.Builder
	for _, m := range b.msgs {
		fmt.Fprintf(&sb, "  %T %+v\n", m, m)
	}
	return sb.String()
}

// next generates the client's next batch.
func (pc *propClient) next() propBatch {
	r := pc.rng
	b := propBatch{}
	switch {
	case pc.status == 'I':
		b.shared = r.IntN(10) < 3
	default:
		b.shared = pc.holding // a transaction stays on the side it began on
	}
	if pc.status == 'E' && r.IntN(10) < 7 {
		b.msgs, b.rfqs = []pgproto3.FrontendMessage{&pgproto3.Query{String: "ROLLBACK"}}, 1
		return b
	}
	if pc.status == 'T' && r.IntN(10) < 2 {
		end := []string{"COMMIT", "ROLLBACK", "END"}[r.IntN(3)]
		b.msgs, b.rfqs = []pgproto3.FrontendMessage{&pgproto3.Query{String: end}}, 1
		return b
	}
	if r.IntN(10) < 3 {
		for {
			q := propSimple[r.IntN(len(propSimple))]
			if q.shared && !b.shared {
				continue
			}
			sql := q.sql(pc.c, r)
			if pc.described && !describes && strings.HasPrefix(sql, "BEGIN ISOLATION") {
				continue
			}
			b.msgs, b.rfqs = []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}, 1
			if strings.HasPrefix(b.msgs[0].(*pgproto3.Query).String, "DEALLOCATE ALL") || strings.HasPrefix(b.msgs[0].(*pgproto3.Query).String, "DISCARD") {
				clear(pc.stmts)
			}
			return b
		}
	}
	pc.extended(&b)
	return b
}

// extended fills b with an extended-protocol pipeline of one to six
// actions, ending with a Sync (and sometimes with a Sync in between).
// suspends says whether the generator may stop a portal of a writing
// statement after some rows. It may not: kproxy may prepare a statement
// again on the server connection later in the transaction, and a Parse
// makes Postgres advance the command counter, which lets the statements
// after it see the changes of a suspended portal that they would not see
// yet on a direct connection (see "What it does not do" in doc.go).
const suspends = false

// describes says whether the generator may change the isolation level
// (BEGIN ISOLATION LEVEL inside a block, which Postgres takes as SET
// TRANSACTION) after a Describe of a statement in the same transaction. It
// may not: where kproxy prepares the statement again to describe it, its
// Parse takes the transaction's snapshot, which Postgres' Describe does not
// (see "What it does not do" in doc.go), and the change is then refused.
const describes = false

// maxRows is the row limit of an Execute of portal.
func (pc *propClient) maxRows(portal string, n uint32) uint32 {
	if pc.portalWrites[portal] && !suspends {
		return 0
	}
	return n
}

func (pc *propClient) extended(b *propBatch) {
	r := pc.rng
	if !b.shared && pc.unnamedShared && pc.status != 'E' && r.IntN(2) == 0 {
		// Replace the unnamed statement first, so that this private batch
		// can use it.
		b.msgs = append(b.msgs, pc.parse("", pc.text(false)))
		b.parsed = append(b.parsed, "")
		pc.unnamedShared = false
	}
	unnamedOK := b.shared || !pc.unnamedShared
	n := 1 + r.IntN(6)
	for range n {
		switch k := r.IntN(20); {
		case k < 6: // Parse
			name := pc.name(b.shared, unnamedOK, false)
			text := pc.text(b.shared && (name == "" || strings.HasPrefix(name, "sh")))
			if name != "" && r.IntN(10) < 8 {
				// Mostly a name the client has not used yet.
				if _, used := pc.stmts[name]; used {
					b.msgs = append(b.msgs, &pgproto3.Close{ObjectType: 'S', Name: name})
				}
			}
			b.msgs = append(b.msgs, pc.parse(name, text))
			b.parsed = append(b.parsed, name)
		case k < 13: // Bind and Execute
			name := pc.name(b.shared, unnamedOK, true)
			text, known := pc.stmts[name]
			if name == "" && !known {
				text = propTexts[0]
			}
			portal := ""
			if pc.status == 'T' && r.IntN(3) == 0 {
				portal = fmt.Sprintf("q%d", r.IntN(2))
			}
			b.msgs = append(b.msgs, pc.bind(portal, name, text))
			// A statement the client is not sure of may write.
			pc.portalWrites[portal] = text.writes || !known || pc.unsure[name]
			if r.IntN(10) < 8 {
				b.msgs = append(b.msgs, &pgproto3.Execute{Portal: portal, MaxRows: pc.maxRows(portal, uint32(max(0, r.IntN(5)-2)))})
			}
		case k < 15: // Execute a portal again
			if pc.status == 'E' {
				// Postgres 15 itself crashes, now and then, executing a
				// portal bound before its transaction failed (signal 11
				// on a direct connection, twice in 2.2M messages).
				break
			}
			portal := ""
			if r.IntN(2) == 0 {
				portal = fmt.Sprintf("q%d", r.IntN(2))
			}
			b.msgs = append(b.msgs, &pgproto3.Execute{Portal: portal, MaxRows: pc.maxRows(portal, uint32(r.IntN(3)))})
		case k < 17: // Describe
			if r.IntN(2) == 0 {
				b.msgs = append(b.msgs, &pgproto3.Describe{ObjectType: 'S', Name: pc.name(b.shared, unnamedOK, true)})
				pc.described = pc.described || pc.status == 'T'
			} else {
				b.msgs = append(b.msgs, &pgproto3.Describe{ObjectType: 'P', Name: []string{"", "q0", "q1"}[r.IntN(3)]})
			}
		case k < 18: // Close
			if r.IntN(2) == 0 {
				name := pc.name(b.shared, unnamedOK, true)
				b.msgs = append(b.msgs, &pgproto3.Close{ObjectType: 'S', Name: name})
				delete(pc.stmts, name)
			} else {
				b.msgs = append(b.msgs, &pgproto3.Close{ObjectType: 'P', Name: []string{"", "q0", "q1"}[r.IntN(3)]})
			}
		case k < 19:
			b.msgs = append(b.msgs, &pgproto3.Flush{})
		default:
			b.msgs = append(b.msgs, &pgproto3.Sync{})
			b.rfqs++
		}
	}
	b.msgs = append(b.msgs, &pgproto3.Sync{})
	b.rfqs++
}

// name picks a statement name: in a private batch only pr* (and the
// unnamed statement when it holds no shared text); used mostly picks one
// the client has prepared.
func (pc *propClient) name(shared, unnamedOK, used bool) string {
	r := pc.rng
	if unnamedOK && r.IntN(3) == 0 {
		return ""
	}
	if used && r.IntN(10) < 8 {
		var names []string
		for _, name := range propNames {
			if _, ok := pc.stmts[name]; ok && (shared || strings.HasPrefix(name, "pr")) {
				names = append(names, name)
			}
		}
		if len(names) > 0 {
			return names[r.IntN(len(names))]
		}
	}
	if shared && r.IntN(2) == 0 {
		return fmt.Sprintf("sh%d", r.IntN(3))
	}
	return fmt.Sprintf("pr%d", r.IntN(3))
}

// text picks a statement text, one that leaves the shared tables alone
// unless shared.
func (pc *propClient) text(shared bool) propText {
	for {
		t := propTexts[pc.rng.IntN(len(propTexts))]
		if !t.shared || shared {
			return t
		}
	}
}

func (pc *propClient) parse(name string, t propText) *pgproto3.Parse {
	r := pc.rng
	var types []uint32
	if len(t.types) > 0 {
		types = t.types[r.IntN(len(t.types))]
	}
	if name == "" {
		pc.unnamedShared = pc.unnamedShared || t.shared
	}
	t.types = [][]uint32{types} // what Bind encodes for
	pc.stmts[name] = t
	return &pgproto3.Parse{Name: name, Query: t.sql(pc.c, r), ParameterOIDs: types}
}

// bind binds t's parameters, in binary where their type is declared, and
// asks for results in a random choice of formats; now and then the
// parameter count is wrong.
func (pc *propClient) bind(portal, stmt string, t propText) *pgproto3.Bind {
	r := pc.rng
	var types []uint32
	if len(t.types) > 0 {
		types = t.types[0]
	}
	params := t.params
	if r.IntN(25) == 0 {
		params = params[:r.IntN(len(params)+1)] + strings.Repeat("i", r.IntN(2))
	}
	m := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for i, kind := range params {
		v := int64(r.IntN(12))
		switch {
		case kind == 't':
			m.ParameterFormatCodes = append(m.ParameterFormatCodes, 0)
			m.Parameters = append(m.Parameters, fmt.Appendf(nil, "p%d", v))
		case i < len(types) && types[i] == oidInt4 && r.IntN(2) == 0:
			m.ParameterFormatCodes = append(m.ParameterFormatCodes, 1)
			m.Parameters = append(m.Parameters, binary.BigEndian.AppendUint32(nil, uint32(v)))
		case i < len(types) && types[i] == oidInt8 && r.IntN(2) == 0:
			m.ParameterFormatCodes = append(m.ParameterFormatCodes, 1)
			m.Parameters = append(m.Parameters, binary.BigEndian.AppendUint64(nil, uint64(v)))
		default:
			m.ParameterFormatCodes = append(m.ParameterFormatCodes, 0)
			m.Parameters = append(m.Parameters, strconv.AppendInt(nil, v, 10))
		}
	}
	switch k := r.IntN(10); {
	case k < 6:
	case k < 8:
		m.ResultFormatCodes = []int16{1}
	case k < 9:
		m.ResultFormatCodes = []int16{0}
	default:
		for range 1 + r.IntN(3) {
			m.ResultFormatCodes = append(m.ResultFormatCodes, int16(r.IntN(2)))
		}
	}
	return m
}

// propHistory is how many of a client's batches a failure report shows.
var propHistory = 6
