package classify

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// corpus is real statements with where they must run: R may go to a
// replica, P must go to the primary.
var corpus = []struct {
	sql   string
	route byte
	kind  Kind
}{
	// pgbench's built-in scripts.
	{"BEGIN;", 'R', KindTransaction},
	{"UPDATE pgbench_accounts SET abalance = abalance + 2000 WHERE aid = 40291;", 'P', KindWriteSimple},
	{"SELECT abalance FROM pgbench_accounts WHERE aid = 40291;", 'R', KindReadSimple},
	{"UPDATE pgbench_tellers SET tbalance = tbalance + -3121 WHERE tid = 7;", 'P', KindWriteSimple},
	{"UPDATE pgbench_branches SET bbalance = bbalance + 12 WHERE bid = 1;", 'P', KindWriteSimple},
	{"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 40291, 2000, CURRENT_TIMESTAMP);", 'P', KindWriteSimple},
	{"END;", 'R', KindTransaction},
	{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", 'R', KindReadSimple},
	{"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 'P', KindWriteSimple},
	{"copy pgbench_accounts from stdin with (freeze on)", 'P', KindWriteBulk},
	{"vacuum analyze pgbench_branches", 'P', 0},
	{"truncate table pgbench_history", 'P', KindDDL},
	// ORM shapes.
	{`SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2`, 'R', KindReadSimple},
	{`SELECT "users"."id", "users"."email" FROM "users" WHERE "users"."email" = 'a@b.c' LIMIT 1`, 'R', KindReadSimple},
	{`SELECT COUNT(*) FROM "orders" WHERE "orders"."user_id" = 42`, 'R', KindReadSimple},
	{`SELECT "posts".* FROM "posts" INNER JOIN "users" ON "users"."id" = "posts"."user_id" WHERE "users"."active" = TRUE ORDER BY "posts"."created_at" DESC LIMIT 20 OFFSET 40`, 'R', KindReadComplex},
	{`SELECT "products".* FROM "products" WHERE "products"."id" IN (1, 2, 3, 4)`, 'R', KindReadSimple},
	{`INSERT INTO "users" ("email", "created_at") VALUES ($1, $2) RETURNING "id"`, 'P', KindWriteSimple},
	{`UPDATE "users" SET "name" = $1, "updated_at" = $2 WHERE "users"."id" = $3`, 'P', KindWriteSimple},
	{`DELETE FROM "sessions" WHERE "sessions"."expires_at" < NOW()`, 'P', KindWriteSimple},
	{`SELECT "auth_user"."id", "auth_user"."password" FROM "auth_user" WHERE "auth_user"."username" = 'bob' LIMIT 21`, 'R', KindReadSimple},
	{`SELECT (1) AS "a" FROM "django_session" WHERE "django_session"."session_key" = 'x' LIMIT 1`, 'R', KindReadSimple},
	{`select user0_.id as id1_0_, user0_.name as name2_0_ from users user0_ where user0_.id=?`, 'P', KindUnknown}, // JDBC placeholder before binding: not SQL
	{`select user0_.id as id1_0_, user0_.name as name2_0_ from users user0_ where user0_.id=$1`, 'R', KindReadSimple},
	{`SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = %(param_1)s`, 'P', KindUnknown},
	{`SELECT users.id FROM users WHERE users.name LIKE 'a%' ORDER BY users.id`, 'R', KindReadSimple},
	{`INSERT INTO items (a, b) VALUES (1, 2), (3, 4), (5, 6)`, 'P', KindWriteBulk},
	{`INSERT INTO archive SELECT * FROM items WHERE created < now() - interval '1 year'`, 'P', KindWriteBulk},
	{`INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a`, 'P', KindWriteSimple},
	{`MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)`, 'P', KindWriteSimple},
	{`SELECT * FROM public.users WHERE id = 1`, 'R', KindReadSimple},
	{`SELECT * FROM app.accounts a JOIN app.owners o ON o.id = a.owner_id`, 'R', KindReadComplex},
	{`SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > 10`, 'R', KindReadComplex},
	{`SELECT DISTINCT country FROM customers`, 'R', KindReadComplex},
	{`SELECT id, rank() OVER (PARTITION BY dept ORDER BY salary DESC) FROM emp`, 'R', KindReadSimple},
	{`SELECT * FROM a UNION ALL SELECT * FROM b`, 'R', KindReadComplex},
	{`SELECT * FROM a EXCEPT SELECT * FROM b`, 'R', KindReadComplex},
	{`SELECT * FROM orders WHERE user_id IN (SELECT id FROM users WHERE banned)`, 'R', KindReadComplex},
	{`SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)`, 'R', KindReadComplex},
	{`SELECT id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u`, 'R', KindReadComplex},
	{`SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id LIMIT 3) x`, 'R', KindReadComplex},
	{`SELECT * FROM generate_series(1, 10) g`, 'R', KindReadComplex},
	{`SELECT now()`, 'R', KindReadSimple},
	{`SELECT 1`, 'R', KindReadSimple},
	{`SELECT pg_sleep(1)`, 'R', KindReadSimple},
	{`SELECT version()`, 'R', KindReadSimple},
	{`SELECT current_setting('search_path')`, 'R', KindReadSimple},
	{`VALUES (1, 'a'), (2, 'b')`, 'R', KindReadComplex},
	{`TABLE users`, 'R', KindReadSimple},
	{`WITH recent AS (SELECT * FROM orders WHERE created > now() - interval '1 day') SELECT count(*) FROM recent`, 'R', KindReadComplex},
	{`WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM t WHERE n < 10) SELECT sum(n) FROM t`, 'R', KindReadComplex},
	{`SELECT json_agg(u) FROM (SELECT id, name FROM users) u`, 'R', KindReadComplex},
	{`SELECT * FROM users WHERE data @> '{"a": 1}'::jsonb`, 'R', KindReadSimple},
	{`SELECT * FROM users ORDER BY id LIMIT 10 FOR SHARE`, 'P', KindReadSimple},
	// Reads that are not reads.
	{`SELECT * FROM accounts WHERE id = 1 FOR UPDATE`, 'P', KindReadSimple},
	{`SELECT * FROM accounts WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED`, 'P', KindReadSimple},
	{`SELECT * FROM jobs WHERE state = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`, 'P', KindReadSimple},
	{`SELECT * FROM accounts a JOIN owners o ON o.id = a.owner_id FOR KEY SHARE OF a`, 'P', KindReadComplex},
	{`SELECT * INTO new_table FROM users`, 'P', KindWriteBulk},
	{`SELECT * INTO archive FROM a UNION SELECT * FROM b`, 'P', KindWriteBulk},
	{`SELECT * FROM (SELECT * FROM jobs FOR UPDATE SKIP LOCKED) j`, 'P', KindReadComplex},
	{`SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)`, 'P', KindReadComplex},
	{`(SELECT * FROM t) UNION (SELECT * FROM u FOR UPDATE)`, 'P', KindReadComplex},
	{`SELECT id INTO TEMP tmp_ids FROM users`, 'P', KindWriteBulk},
	{`WITH moved AS (DELETE FROM queue WHERE id = 1 RETURNING *) SELECT * FROM moved`, 'P', KindWriteSimple},
	{`WITH ins AS (INSERT INTO log (msg) VALUES ('x') RETURNING id) SELECT id FROM ins`, 'P', KindWriteSimple},
	{`WITH u AS (UPDATE counters SET n = n + 1 WHERE id = 1 RETURNING n) SELECT n FROM u`, 'P', KindWriteSimple},
	{`SELECT nextval('orders_id_seq')`, 'P', KindReadSimple},
	{`SELECT setval('orders_id_seq', 100)`, 'P', KindReadSimple},
	{`SELECT currval('orders_id_seq')`, 'P', KindReadSimple},
	{`SELECT lastval()`, 'P', KindReadSimple},
	{`SELECT id, nextval('s') FROM users`, 'P', KindReadSimple},
	{`SELECT pg_advisory_lock(1)`, 'P', KindReadSimple},
	{`SELECT pg_try_advisory_lock(1, 2)`, 'P', KindReadSimple},
	{`SELECT pg_advisory_unlock(1)`, 'P', KindReadSimple},
	{`SELECT pg_advisory_xact_lock(7)`, 'P', KindReadSimple},
	{`SELECT set_config('app.user', '42', false)`, 'P', KindReadSimple},
	{`SELECT txid_current()`, 'P', KindReadSimple},
	{`SELECT pg_current_xact_id()`, 'P', KindReadSimple},
	{`SELECT pg_notify('ch', 'payload')`, 'P', KindReadSimple},
	{`SELECT pg_catalog.nextval('s')`, 'P', KindReadSimple},
	{`SELECT * FROM users WHERE id = (SELECT nextval('s'))`, 'P', KindReadSimple},
	{`SELECT lo_create(0)`, 'P', KindReadSimple},
	{`SELECT pg_terminate_backend(123)`, 'P', KindReadSimple},
	{`SELECT pg_current_wal_lsn()`, 'P', KindReadSimple},
	{`SELECT lo_open(16403, 131072)`, 'P', KindReadSimple},
	{`SELECT lo_export(16403, '/tmp/blob')`, 'P', KindReadSimple},
	{`SELECT pg_logical_emit_message(true, 'app', 'x')`, 'P', KindReadSimple},
	{`SELECT pg_promote()`, 'P', KindReadSimple},
	// EXPLAIN.
	{`EXPLAIN SELECT * FROM users`, 'R', KindReadComplex},
	{`EXPLAIN (COSTS OFF) SELECT * FROM users WHERE id = 1`, 'R', KindReadComplex},
	{`EXPLAIN ANALYZE SELECT * FROM users`, 'R', KindReadSimple},
	{`EXPLAIN ANALYZE UPDATE users SET name = 'x'`, 'P', KindWriteSimple},
	{`EXPLAIN (ANALYZE, BUFFERS) DELETE FROM users WHERE id = 1`, 'P', KindWriteSimple},
	{`EXPLAIN (ANALYZE false) DELETE FROM users WHERE id = 1`, 'R', KindReadComplex},
	{`EXPLAIN UPDATE users SET name = 'x'`, 'R', KindReadComplex},
	{`EXPLAIN ANALYZE SELECT nextval('s')`, 'P', KindReadSimple},
	// COPY.
	{`COPY users TO STDOUT`, 'R', KindReadSimple},
	{`COPY users (id, name) TO STDOUT WITH (FORMAT csv, HEADER)`, 'R', KindReadSimple},
	{`COPY (SELECT * FROM users WHERE active) TO STDOUT`, 'R', KindReadComplex},
	{`COPY users FROM STDIN`, 'P', KindWriteBulk},
	{`COPY users FROM STDIN WITH (FORMAT binary)`, 'P', KindWriteBulk},
	{`COPY (DELETE FROM users RETURNING *) TO STDOUT`, 'P', KindWriteSimple},
	{`COPY users TO '/tmp/users.csv'`, 'P', KindReadSimple},
	{`COPY users TO PROGRAM 'gzip > /tmp/users.gz'`, 'P', KindReadSimple},
	// Session commands.
	{`SHOW search_path`, 'R', KindReadSimple},
	{`SHOW ALL`, 'R', KindReadSimple},
	{`SET search_path = app, public`, 'P', KindUnknown},
	{`SET LOCAL statement_timeout = '5s'`, 'P', KindUnknown},
	{`SET TIME ZONE 'UTC'`, 'P', KindUnknown},
	{`RESET ALL`, 'P', KindUnknown},
	{`DISCARD ALL`, 'P', KindUnknown},
	{`LISTEN events`, 'P', KindUnknown},
	{`NOTIFY events, 'x'`, 'P', KindUnknown},
	{`UNLISTEN *`, 'P', KindUnknown},
	{`PREPARE q(int) AS SELECT $1`, 'P', KindUnknown},
	{`EXECUTE q(1)`, 'P', KindWriteSimple},
	{`DEALLOCATE q`, 'P', KindUnknown},
	{`LOAD 'auto_explain'`, 'P', KindUnknown},
	// Procedural code.
	{`DO $$BEGIN RAISE NOTICE 'hi'; END$$`, 'P', KindWriteSimple},
	{`DO $$BEGIN INSERT INTO t VALUES (1); END$$`, 'P', KindWriteSimple},
	{`CALL refresh_totals()`, 'P', KindWriteSimple},
	{`CALL app.process_batch(10)`, 'P', KindWriteSimple},
	// Transaction control.
	{`BEGIN`, 'R', KindTransaction},
	{`BEGIN ISOLATION LEVEL SERIALIZABLE`, 'R', KindTransaction},
	{`BEGIN READ ONLY`, 'R', KindTransaction},
	{`BEGIN TRANSACTION READ WRITE`, 'R', KindTransaction},
	{`START TRANSACTION READ ONLY`, 'R', KindTransaction},
	{`START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY`, 'R', KindTransaction},
	{`COMMIT`, 'R', KindTransaction},
	{`END`, 'R', KindTransaction},
	{`ROLLBACK`, 'R', KindTransaction},
	{`ABORT`, 'R', KindTransaction},
	{`SAVEPOINT sp1`, 'R', KindTransaction},
	{`RELEASE SAVEPOINT sp1`, 'R', KindTransaction},
	{`ROLLBACK TO SAVEPOINT sp1`, 'R', KindTransaction},
	{`PREPARE TRANSACTION 'tx1'`, 'P', KindTransaction},
	{`COMMIT PREPARED 'tx1'`, 'P', KindTransaction},
	{`SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`, 'P', KindUnknown},
	// DDL.
	{`CREATE TABLE t (id serial PRIMARY KEY, v text)`, 'P', KindDDL},
	{`CREATE TEMP TABLE t (id int)`, 'P', KindDDL},
	{`CREATE INDEX CONCURRENTLY ON t (v)`, 'P', KindDDL},
	{`ALTER TABLE t ADD COLUMN w int`, 'P', KindDDL},
	{`DROP TABLE IF EXISTS t`, 'P', KindDDL},
	{`CREATE VIEW v AS SELECT * FROM t`, 'P', KindDDL},
	{`CREATE MATERIALIZED VIEW mv AS SELECT * FROM t`, 'P', KindDDL},
	{`REFRESH MATERIALIZED VIEW mv`, 'P', KindDDL},
	{`GRANT SELECT ON t TO bob`, 'P', KindDDL},
	{`CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'`, 'P', KindDDL},
	{`COMMENT ON TABLE t IS 'x'`, 'P', KindDDL},
	{`CREATE EXTENSION IF NOT EXISTS pgcrypto`, 'P', KindDDL},
	{`ANALYZE t`, 'P', 0},
	{`LOCK TABLE t IN ACCESS EXCLUSIVE MODE`, 'P', KindWriteSimple},
	{`DECLARE c CURSOR FOR SELECT * FROM t`, 'P', KindWriteSimple},
	{`FETCH 10 FROM c`, 'P', KindWriteSimple},
	{`CLOSE c`, 'P', KindWriteSimple},
	{`CHECKPOINT`, 'P', KindWriteSimple},
	// Comments and hints.
	{`-- leading comment
SELECT 1`, 'R', KindReadSimple},
	{`/* app: dashboard */ SELECT count(*) FROM users`, 'R', KindReadSimple},
	{`SELECT 1 /* trailing */`, 'R', KindReadSimple},
	{`/* UPDATE in a comment */ SELECT 1`, 'R', KindReadSimple},
	{`SELECT 'DELETE FROM users' AS s`, 'R', KindReadSimple},
	{`SELECT $$ INSERT $$`, 'R', KindReadSimple},
	// Multi-statement strings classify as the most demanding statement.
	{`SELECT 1; SELECT 2`, 'R', KindReadSimple},
	{`SELECT 1; UPDATE t SET v = 1`, 'P', KindWriteSimple},
	{`BEGIN; SELECT * FROM t; COMMIT`, 'R', KindTransaction},
	{`BEGIN; INSERT INTO t VALUES (1); COMMIT`, 'P', KindWriteSimple},
	{`SET search_path = x; SELECT * FROM t`, 'P', KindUnknown},
	{`SELECT * FROM t; CREATE TABLE u (a int)`, 'P', KindDDL},
	// What the parser rejects never goes to a replica.
	{`SELEC 1`, 'P', KindUnknown},
	{`SELECT * FROM`, 'P', KindUnknown},
	{``, 'P', KindUnknown},
	{`;`, 'P', KindUnknown},
}

func TestCorpusRoutesEveryStatementAsExpected(t *testing.T) {
	require.GreaterOrEqual(t, len(corpus), 150)
	c := New(1000, nil)
	var misroutedWrites []string
	for _, tt := range corpus {
		t.Run(tt.sql, func(t *testing.T) {
			r := c.Classify(tt.sql)
			got := byte('P')
			if r.ReadOnly {
				got = 'R'
			}
			if tt.route == 'P' && got == 'R' {
				misroutedWrites = append(misroutedWrites, tt.sql)
			}
			assert.Equal(t, string(tt.route), string(got), "route of %q (%+v)", tt.sql, r)
			if tt.kind != 0 || tt.route == 'R' {
				assert.Equal(t, tt.kind, r.Kind, "kind of %q", tt.sql)
			}
		})
	}
	assert.Empty(t, misroutedWrites, "statements that must run on the primary but were classified read-only")
}

func TestFlagsReportTransactionsLocksAndHints(t *testing.T) {
	c := New(100, nil)
	tests := []struct {
		sql  string
		want Flags
	}{
		{"BEGIN READ ONLY", FlagTxControl | FlagTxBegin | FlagReadOnlyTx},
		{"START TRANSACTION READ WRITE", FlagTxControl | FlagTxBegin},
		{"COMMIT", FlagTxControl | FlagTxEnd},
		{"SELECT * FROM t FOR UPDATE", FlagLocking},
		{"SELECT nextval('s')", FlagSideEffectFunc},
		{"SET x.y = 1", FlagSessionState},
		{"/* kproxy:primary */ SELECT 1", FlagHintPrimary},
		{"SELECT 1 -- kproxy:replica", FlagHintReplica},
		{"SELECT 1; SELECT 2", FlagMultiStatement},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			assert.Equal(t, tt.want, c.Classify(tt.sql).Flags)
		})
	}
}

func TestTablesReadAndWrittenAreReported(t *testing.T) {
	c := New(100, nil)
	r := c.Classify("INSERT INTO app.audit (who) SELECT name FROM public.users u JOIN roles ON roles.id = u.role")
	assert.ElementsMatch(t, []string{"public.users", "roles"}, r.Tables)
	assert.Equal(t, []string{"app.audit"}, r.Written)
	assert.False(t, r.ReadOnly)
}

func TestStatementsThatDifferOnlyInLiteralsShareACacheEntry(t *testing.T) {
	c := New(100, nil)
	for i := range 100 {
		r := c.Classify(fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d AND name = 'n%d' AND x > %d.5e3", i, i, i))
		require.True(t, r.ReadOnly)
	}
	st := c.Stats()
	assert.EqualValues(t, 1, st.Misses)
	assert.EqualValues(t, 99, st.Hits)
	assert.Equal(t, 1, st.Size)
	// A hint is part of the shape.
	assert.NotEqual(t, c.Classify("/* kproxy:primary */ SELECT 1").Flags, c.Classify("SELECT 1").Flags)
}

func TestExplainAnalyzeWithAValueIsNotCachedUnderItsShape(t *testing.T) {
	c := New(100, nil)
	require.True(t, c.Classify("EXPLAIN (ANALYZE 'off') DELETE FROM users").ReadOnly)
	assert.False(t, c.Classify("EXPLAIN (ANALYZE 'on') DELETE FROM users").ReadOnly)
	require.True(t, c.Classify("EXPLAIN (ANALYZE 0) DELETE FROM users").ReadOnly)
	assert.False(t, c.Classify("EXPLAIN (ANALYZE 1) DELETE FROM users").ReadOnly)
}

func TestVolatileUserFunctionsGoToThePrimaryUnlessDeclaredReadOnly(t *testing.T) {
	c := New(100, []string{"app.safe_fn"})
	assert.True(t, c.Classify("SELECT my_fn(1)").ReadOnly)
	c.SetVolatileFunctions([]string{"my_fn", "app.safe_fn"})
	assert.False(t, c.Classify("SELECT my_fn(1)").ReadOnly)
	assert.True(t, c.Classify("SELECT app.safe_fn(1)").ReadOnly)
}

func TestClassifyIsSafeForConcurrentUse(t *testing.T) {
	c := New(8, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				r := c.Classify(fmt.Sprintf("SELECT * FROM t%d WHERE id = %d", (g+i)%20, i))
				assert.True(t, r.ReadOnly)
			}
		}()
	}
	wg.Wait()
}

func FuzzClassify(f *testing.F) {
	for _, tt := range corpus {
		f.Add(tt.sql)
	}
	c := New(64, nil)
	f.Fuzz(func(t *testing.T, sql string) {
		r := c.Classify(sql)
		first := strings.ToLower(strings.TrimSpace(sql))
		for _, w := range []string{"insert ", "update ", "delete "} {
			if strings.HasPrefix(first, w) && r.ReadOnly {
				t.Fatalf("%q classified read-only", sql)
			}
		}
	})
}

func BenchmarkClassifyHit(b *testing.B) {
	c := New(1000, nil)
	const q = "SELECT abalance FROM pgbench_accounts WHERE aid = 40291;"
	c.Classify(q)
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(q)
	}
}

func BenchmarkClassifyNewLiterals(b *testing.B) {
	c := New(1000, nil)
	qs := make([]string, 1024)
	for i := range qs {
		qs[i] = fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", 1000000+i*7919)
	}
	c.Classify(qs[0])
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Classify(qs[i&1023])
		i++
	}
}

func BenchmarkClassifyNewShape(b *testing.B) {
	c := New(1<<20, nil)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Classify(fmt.Sprintf("SELECT a%d, b FROM t%d JOIN u ON u.id = t%d.uid WHERE x = 1", i, i, i))
		i++
	}
}

func TestALearnedShapeGoesToThePrimaryWhateverItsLiterals(t *testing.T) {
	c := New(100, nil)
	require.True(t, c.Classify("SELECT audit_touch(1)").ReadOnly, "an unknown function is taken for a read")
	assert.True(t, c.Learn("SELECT audit_touch(1)"))
	assert.False(t, c.Learn("SELECT audit_touch(2)"), "the same shape")
	r := c.Classify("SELECT audit_touch(42)")
	assert.False(t, r.ReadOnly)
	assert.NotZero(t, r.Flags&FlagLearned)
	c.SetVolatileFunctions(nil) // purges the cache; learned shapes stay
	assert.False(t, c.Classify("SELECT audit_touch(7)").ReadOnly)
	assert.True(t, c.Classify("SELECT audit_peek(7)").ReadOnly)
	assert.Equal(t, 1, c.Stats().Learned)
}
