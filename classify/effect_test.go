package classify

import (
	"slices"
	"testing"
)

func TestSessionEffectFindsStatementsThatLeaveStateBehind(t *testing.T) {
	tests := []struct {
		sql  string
		want Effect
	}{
		{"SELECT 1", EffectNone},
		{"select * from t where a = 'set x = 1'", EffectNone},
		{"SET search_path = app", EffectNone},
		{"set  TimeZone TO 'UTC'", EffectNone},
		{"SET LOCAL statement_timeout = 5", EffectNone},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", EffectNone},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", EffectNone},
		{"SET CONSTRAINTS ALL DEFERRED", EffectNone},
		{"RESET ALL", EffectNone},
		{"select set_config('a.b', '1', false)", EffectNone},
		{"PREPARE q(int) AS SELECT $1", EffectPrepare},
		{"PREPARE TRANSACTION 'x'", EffectNone},
		{"LISTEN chan", EffectListen},
		{"UNLISTEN *", EffectNone},
		{"SELECT pg_advisory_lock(1)", EffectAdvisoryLock},
		{"SELECT pg_try_advisory_lock_shared (1, 2)", EffectAdvisoryLock},
		{"SELECT pg_advisory_xact_lock(1)", EffectNone},
		{"SELECT pg_advisory_unlock(1)", EffectNone},
		{"CREATE TEMP TABLE t (a int)", EffectTempTable},
		{"create global temporary table t (a int)", EffectTempTable},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", EffectTempTable},
		{"CREATE TABLE temp (a int)", EffectNone},
		{"SELECT 1 INTO TEMP t", EffectTempTable},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", EffectHoldCursor},
		{"DECLARE c CURSOR FOR SELECT 'with hold'", EffectNone},
		{"LOAD 'auto_explain'", EffectLoad},
		{"SELECT 1; SET x.y = 2", EffectNone},
		{"-- SET x = 1\nSELECT 1", EffectNone},
		{"/* SET /* nested */ x */ SELECT 1", EffectNone},
		{"SELECT $$ SET a = 1; $$", EffectNone},
		{"SELECT $tag$ LISTEN x $tag$", EffectNone},
		{"SELECT E'\\' ; LISTEN x'", EffectNone},
		{`SELECT "set" FROM t`, EffectNone},
		{"DO $$BEGIN PERFORM 1; END$$", EffectNone},
		{"", EffectNone},
		{"SELECT 'unterminated", EffectNone},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			if got := SessionEffect(tt.sql); got != tt.want {
				t.Fatalf("SessionEffect(%q) = %v, want %v", tt.sql, got, tt.want)
			}
		})
	}
}

func TestScanSessionReportsSettingsReleasesAndDeallocation(t *testing.T) {
	tests := []struct {
		sql  string
		want Session
	}{
		{"SELECT 1", Session{}},
		{"SET search_path = app", Session{Settings: true}},
		{"SET LOCAL search_path = app", Session{}},
		{"SET SESSION AUTHORIZATION bob", Session{Settings: true}},
		{"RESET ALL", Session{Settings: true}},
		{"select set_config('a.b', '1', false)", Session{Settings: true}},
		{"DISCARD ALL", Session{Settings: true, MayRelease: true, DropsAllStatements: true}},
		{"DISCARD TEMP", Session{MayRelease: true}},
		{"DEALLOCATE ALL", Session{MayRelease: true, DropsAllStatements: true, DeallocateAll: true}},
		{"DEALLOCATE ALL; SELECT 1", Session{MayRelease: true, DropsAllStatements: true}},
		{"DEALLOCATE PREPARE ALL", Session{MayRelease: true, DropsAllStatements: true, DeallocateAll: true}},
		{"DO $$BEGIN PERFORM 1; END$$", Session{RunsCode: true}},
		{"CALL p(1)", Session{RunsCode: true}},
		{"CREATE OR REPLACE FUNCTION f() RETURNS int AS $$SELECT 1$$ LANGUAGE sql", Session{FunctionDDL: true, Schema: true}},
		{"alter table t add column c int", Session{Schema: true}},
		{"CREATE TABLE t (a int)", Session{Schema: true}},
		{"SELECT 'DROP TABLE t'", Session{}},
		{"deallocate s1", Session{MayRelease: true, Deallocate: "s1"}},
		{"DEALLOCATE PREPARE s1;", Session{MayRelease: true, Deallocate: "s1"}},
		{"DEALLOCATE s1; SELECT 1", Session{MayRelease: true}},
		{"SELECT pg_advisory_unlock(1)", Session{MayRelease: true}},
		{"UNLISTEN *", Session{MayRelease: true}},
		{"DROP TABLE t", Session{MayRelease: true, Schema: true}},
		{"COMMIT", Session{MayRelease: true}},
		{"LISTEN a; SET x.y = 1", Session{Pin: EffectListen, Settings: true}},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			if got := ScanSession(tt.sql); got != tt.want {
				t.Fatalf("ScanSession(%q) = %+v, want %+v", tt.sql, got, tt.want)
			}
		})
	}
}

func FuzzSessionEffect(f *testing.F) {
	for _, s := range []string{"SET a=1", "SELECT $a$ x $a$", "E'\\'", "/* /* */", "$1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		_ = SessionEffect(sql).String()
		_ = ScanSession(sql)
	})
}

// BenchmarkScanSession scans pgbench's select-only statement, which kproxy
// does for every statement a client sends in transaction mode.
func BenchmarkScanSession(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if s := ScanSession("SELECT abalance FROM pgbench_accounts WHERE aid = 40721;"); s != (Session{}) {
			b.Fatal(s)
		}
	}
}

func TestScanSessionFindsTheClientsViewOfPreparedStatements(t *testing.T) {
	tests := []struct {
		sql  string
		want []string // the referenced names, with "+alias" when an alias follows
	}{
		{"select count(*) from pg_prepared_statements where statement = $1", []string{"pg_prepared_statements"}},
		{"SELECT name FROM pg_catalog.pg_prepared_statements", []string{"pg_catalog.pg_prepared_statements"}},
		{"select exists(select 1 from PG_Prepared_Statements p where p.name = 'x')", []string{"PG_Prepared_Statements+alias"}},
		{"SELECT * FROM pg_prepared_statements AS ps JOIN pg_prepared_statements ON true", []string{"pg_prepared_statements+alias", "pg_prepared_statements"}},
		{"WITH s AS (SELECT * FROM pg_prepared_statements) SELECT * FROM s", []string{"pg_prepared_statements"}},
		{"SELECT 1; SELECT * FROM pg_prepared_statements ORDER BY name", []string{"pg_prepared_statements"}},
		// Not the view, or not a read of it.
		{"SELECT * FROM myschema.pg_prepared_statements", nil},
		{"SELECT pg_prepared_statements.name FROM t", nil},
		{"SELECT 'from pg_prepared_statements'", nil},
		{"CREATE VIEW v AS SELECT * FROM pg_prepared_statements", nil},
		{"INSERT INTO t SELECT name FROM pg_prepared_statements", nil},
		{"SELECT * FROM \"pg_prepared_statements\"", nil},
	}
	for _, tt := range tests {
		var got []string
		if ScanSession(tt.sql).PreparedStatementsView != (tt.want != nil) {
			t.Errorf("%q: PreparedStatementsView is %v", tt.sql, !(tt.want != nil))
		}
		for _, r := range PreparedStatementsRefs(tt.sql) {
			s := tt.sql[r.Start:r.End]
			if r.Aliased {
				s += "+alias"
			}
			got = append(got, s)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%q: got %q, want %q", tt.sql, got, tt.want)
		}
	}
}
