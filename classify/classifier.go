package classify

import (
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Kind is the category of a statement, in the terms Kailash's query router
// uses.
type Kind uint8

// Kinds, from least to most demanding.
const (
	KindReadSimple  Kind = iota // a SELECT of one table without joins or subqueries
	KindReadComplex             // any other read
	KindTransaction             // BEGIN, COMMIT, SAVEPOINT…
	KindUnknown                 // unparsable, or a session command (SET, SHOW…)
	KindWriteSimple             // INSERT, UPDATE, DELETE, MERGE of a few rows
	KindWriteBulk               // COPY FROM, INSERT … SELECT, multi-row VALUES
	KindDDL                     // CREATE, ALTER, DROP, TRUNCATE, GRANT…
)

var kindNames = [...]string{"read_simple", "read_complex", "transaction", "unknown", "write_simple", "write_bulk", "ddl"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Flags are facts about a statement beyond its kind.
type Flags uint16

// Flags.
const (
	FlagLocking        Flags = 1 << iota // FOR UPDATE/SHARE
	FlagSideEffectFunc                   // calls a function that writes or needs the primary
	FlagSessionState                     // SET, RESET, DISCARD, LISTEN…
	FlagTxControl                        // BEGIN, COMMIT, ROLLBACK, SAVEPOINT…
	FlagReadOnlyTx                       // BEGIN/START TRANSACTION READ ONLY, SET TRANSACTION READ ONLY
	FlagTxBegin                          // BEGIN or START TRANSACTION
	FlagTxEnd                            // COMMIT, END, ROLLBACK, ABORT
	FlagHintPrimary                      // a /* kproxy:primary */ comment
	FlagHintReplica                      // a /* kproxy:replica */ comment
	FlagMultiStatement                   // several statements
	FlagLearned                          // a replica refused the shape with 25006: kproxy learned it writes
)

// Result is what kproxy knows about a statement. Its slices are shared
// with the classifier's cache: callers must not modify them.
type Result struct {
	Kind Kind
	// ReadOnly is set when the statement can run on a hot-standby replica
	// with the same result: reads without locking clauses or
	// side-effecting functions, SHOW, EXPLAIN without ANALYZE of anything,
	// COPY … TO.
	ReadOnly bool
	Flags    Flags
	Tables   []string // tables read, as written (schema-qualified when it was)
	Written  []string // tables written
	// Fingerprint identifies the statement's shape: statements that differ
	// only in literals share it.
	Fingerprint uint64
}

// sideEffectFuncs need the primary although they appear in reads.
var sideEffectFuncs = map[string]bool{
	"nextval": true, "setval": true, "currval": true, "lastval": true,
	"set_config": true, "txid_current": true, "pg_current_xact_id": true, "txid_current_if_assigned": true,
	"pg_current_xact_id_if_assigned": true, "pg_notify": true,
	"pg_advisory_lock": true, "pg_advisory_lock_shared": true, "pg_try_advisory_lock": true,
	"pg_try_advisory_lock_shared": true, "pg_advisory_unlock": true, "pg_advisory_unlock_shared": true,
	"pg_advisory_unlock_all": true, "pg_advisory_xact_lock": true, "pg_advisory_xact_lock_shared": true,
	"pg_try_advisory_xact_lock": true, "pg_try_advisory_xact_lock_shared": true,
	"lo_create": true, "lo_creat": true, "lo_import": true, "lo_unlink": true, "lo_put": true, "lo_from_bytea": true,
	"lowrite": true, "lo_truncate": true, "lo_truncate64": true, "lo_open": true, "lo_export": true, "dblink_exec": true,
	"pg_logical_emit_message": true, "pg_promote": true, "pg_wal_replay_pause": true, "pg_wal_replay_resume": true,
	"pg_switch_wal": true, "pg_create_restore_point": true,
	"pg_terminate_backend": true, "pg_cancel_backend": true, "pg_reload_conf": true,
	"pg_create_logical_replication_slot": true, "pg_create_physical_replication_slot": true, "pg_drop_replication_slot": true,
	"pg_current_wal_lsn": true, "pg_current_wal_insert_lsn": true, "pg_current_wal_flush_lsn": true,
}

// Classifier classifies SQL with the Postgres parser, caching results by
// statement shape so that statements differing only in literals are parsed
// once. It is safe for concurrent use.
type Classifier struct {
	cache    *lru.Cache[string, Result]
	readOnly atomic.Pointer[map[string]bool] // functions declared read-only in config
	hits     atomic.Int64
	misses   atomic.Int64

	// volMu orders SetVolatileFunctions against the cache insert of a
	// result computed with the previous set, which must be dropped.
	volMu    sync.RWMutex
	volGen   atomic.Uint64                   // bumped by SetVolatileFunctions and Learn under volMu
	volatile atomic.Pointer[map[string]bool] // user functions that are not IMMUTABLE/STABLE

	// learned holds the shapes a replica refused (Learn). They outlive
	// cache evictions and purges.
	learnMu sync.RWMutex
	learned map[string]bool
}

// maxLearned bounds the shapes Learn remembers.
const maxLearned = 10000

// CacheStats counts classifier cache lookups.
type CacheStats struct {
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
	Size   int   `json:"size"`
	// Learned counts the shapes a replica refused with 25006.
	Learned int `json:"learned"`
}

// New returns a classifier caching up to cacheSize shapes. readOnlyFuncs
// names user functions to treat as reads even if volatile.
func New(cacheSize int, readOnlyFuncs []string) *Classifier {
	cache, err := lru.New[string, Result](max(cacheSize, 1))
	if err != nil {
		panic(err) // only for a non-positive size, excluded above
	}
	c := &Classifier{cache: cache}
	c.readOnly.Store(lowerSet(readOnlyFuncs))
	empty := map[string]bool{}
	c.volatile.Store(&empty)
	return c
}

func lowerSet(names []string) *map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[strings.ToLower(n)] = true
	}
	return &m
}

// SetReadOnlyFunctions replaces the functions declared read-only in
// config (names lower-cased, optionally schema-qualified). The cache is
// cleared.
func (c *Classifier) SetReadOnlyFunctions(names []string) {
	m := lowerSet(names)
	c.volMu.Lock()
	defer c.volMu.Unlock()
	c.readOnly.Store(m)
	c.volGen.Add(1)
	c.cache.Purge()
}

// SetVolatileFunctions replaces the user-defined functions that are neither
// IMMUTABLE nor STABLE (names lower-cased, optionally schema-qualified);
// calls to them send a statement to the primary. The cache is cleared.
func (c *Classifier) SetVolatileFunctions(names []string) {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[strings.ToLower(n)] = true
	}
	c.volMu.Lock()
	defer c.volMu.Unlock()
	c.volatile.Store(&m)
	c.volGen.Add(1)
	c.cache.Purge()
}

// Learn records that sql's shape is not read-only after all: a replica
// refused it with 25006 (a function the classifier did not know writes,
// say). From now on Classify sends statements of that shape to the
// primary. It reports whether the shape was new.
func (c *Classifier) Learn(sql string) bool {
	var buf [256]byte
	key := string(normalize(buf[:0], sql))
	c.learnMu.Lock()
	if c.learned[key] || len(c.learned) >= maxLearned {
		c.learnMu.Unlock()
		return false
	}
	if c.learned == nil {
		c.learned = map[string]bool{}
	}
	c.learned[key] = true
	c.learnMu.Unlock()
	// A Classify that parsed before the line above must not cache its
	// verdict: the generation tells it.
	c.volMu.Lock()
	c.volGen.Add(1)
	c.cache.Remove(key)
	c.volMu.Unlock()
	return true
}

// Learned returns how many shapes Learn recorded.
func (c *Classifier) Learned() int {
	c.learnMu.RLock()
	defer c.learnMu.RUnlock()
	return len(c.learned)
}

// Stats returns the cache counters.
func (c *Classifier) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Size: c.cache.Len(), Learned: c.Learned()}
}

// Classify classifies sql, a string of one or more statements, as its most
// demanding statement. It never fails: what the parser rejects is
// KindUnknown and not read-only.
func (c *Classifier) Classify(sql string) Result {
	var buf [256]byte
	key := normalize(buf[:0], sql)
	// The lookup needs no copy of the key (Get does not keep it); only an
	// insert does.
	if r, ok := c.cache.Get(unsafe.String(unsafe.SliceData(key), len(key))); ok {
		c.hits.Add(1)
		return r
	}
	c.misses.Add(1)
	gen := c.volGen.Load()
	r, literalSensitive := c.parse(sql)
	if hint := hintFlags(key); hint != 0 {
		r.Flags |= hint
	}
	c.learnMu.RLock()
	if c.learned[string(key)] {
		r.ReadOnly = false
		r.Flags |= FlagLearned
	}
	c.learnMu.RUnlock()
	if literalSensitive {
		return r
	}
	c.volMu.RLock()
	if c.volGen.Load() == gen {
		c.cache.Add(string(key), r)
	}
	c.volMu.RUnlock()
	return r
}

// parse classifies sql with the Postgres parser. literalSensitive is set
// when the answer depends on a literal the cache key hides, as in EXPLAIN
// (ANALYZE 'off') against EXPLAIN (ANALYZE 'on'); such a result must not
// be cached under the shape.
func (c *Classifier) parse(sql string) (_ Result, literalSensitive bool) {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.GetStmts()) == 0 {
		return Result{Kind: KindUnknown}, false
	}
	fp, _ := pg_query.FingerprintToUInt64(sql)
	out := Result{ReadOnly: true, Fingerprint: fp}
	if len(tree.GetStmts()) > 1 {
		out.Flags |= FlagMultiStatement
	}
	out.Kind = KindReadSimple
	first := true
	for _, raw := range tree.GetStmts() {
		literalSensitive = literalSensitive || explainAnalyzeHasArg(raw.GetStmt())
		r := classifyStmt(raw.GetStmt())
		out.Flags |= r.Flags
		out.ReadOnly = out.ReadOnly && r.ReadOnly
		if first || r.Kind > out.Kind {
			out.Kind = r.Kind
		}
		first = false
	}
	if sum, err := pg_query.Summary(sql, -1); err == nil {
		for _, t := range sum.GetTables() {
			switch t.GetContext() {
			case pg_query.SummaryResult_Select:
				out.Tables = append(out.Tables, t.GetName())
			case pg_query.SummaryResult_DML, pg_query.SummaryResult_DDL:
				out.Written = append(out.Written, t.GetName())
			}
		}
		vol := *c.volatile.Load()
		for _, f := range sum.GetFunctions() {
			name := strings.ToLower(f.GetFunctionName())
			full := strings.ToLower(f.GetName())
			if ro := *c.readOnly.Load(); ro[name] || ro[full] {
				continue
			}
			if sideEffectFuncs[name] || vol[name] || vol[full] {
				out.Flags |= FlagSideEffectFunc
				out.ReadOnly = false
			}
		}
	} else {
		out.ReadOnly = false
	}
	return out, literalSensitive
}

// explainAnalyzeHasArg reports an EXPLAIN whose ANALYZE option has a value
// (on, off, 'true', 0…), which the cache key may have replaced by '?'.
func explainAnalyzeHasArg(n *pg_query.Node) bool {
	for _, o := range n.GetExplainStmt().GetOptions() {
		if d := o.GetDefElem(); d != nil && strings.EqualFold(d.GetDefname(), "analyze") && d.GetArg() != nil {
			return true
		}
	}
	return false
}

// classifyStmt classifies one statement of a parse tree.
func classifyStmt(n *pg_query.Node) Result {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return classifySelect(s.SelectStmt)
	case *pg_query.Node_InsertStmt:
		k := KindWriteSimple
		if sel := s.InsertStmt.GetSelectStmt().GetSelectStmt(); sel != nil && (len(sel.GetValuesLists()) > 1 || len(sel.GetFromClause()) > 0) {
			k = KindWriteBulk
		}
		return Result{Kind: k}
	case *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		return Result{Kind: KindWriteSimple}
	case *pg_query.Node_CopyStmt:
		if s.CopyStmt.GetIsFrom() {
			return Result{Kind: KindWriteBulk}
		}
		r := Result{Kind: KindReadSimple, ReadOnly: true}
		if q := s.CopyStmt.GetQuery(); q != nil {
			r = classifyStmt(q)
			if r.Kind == KindReadSimple {
				r.Kind = KindReadComplex
			}
		}
		if s.CopyStmt.GetFilename() != "" || s.CopyStmt.GetIsProgram() {
			// The file or program is expected on the primary's host.
			r.ReadOnly = false
		}
		return r
	case *pg_query.Node_ExplainStmt:
		analyze := false
		for _, o := range s.ExplainStmt.GetOptions() {
			if d := o.GetDefElem(); d != nil && strings.EqualFold(d.GetDefname(), "analyze") {
				analyze = d.GetArg() == nil || !isFalse(d.GetArg())
			}
		}
		r := classifyStmt(s.ExplainStmt.GetQuery())
		if analyze {
			return r
		}
		return Result{Kind: KindReadComplex, ReadOnly: true}
	case *pg_query.Node_VariableShowStmt:
		return Result{Kind: KindReadSimple, ReadOnly: true}
	case *pg_query.Node_TransactionStmt:
		return classifyTransaction(s.TransactionStmt)
	case *pg_query.Node_VariableSetStmt:
		f := FlagSessionState
		if s.VariableSetStmt.GetName() == "TRANSACTION" || s.VariableSetStmt.GetName() == "SESSION CHARACTERISTICS" {
			for _, a := range s.VariableSetStmt.GetArgs() {
				if d := a.GetDefElem(); d != nil && d.GetDefname() == "transaction_read_only" && !isFalse(d.GetArg()) {
					f |= FlagReadOnlyTx
				}
			}
		}
		// SET is harmless on a replica, but it belongs with the session.
		return Result{Kind: KindUnknown, Flags: f}
	case *pg_query.Node_DiscardStmt, *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt,
		*pg_query.Node_NotifyStmt, *pg_query.Node_PrepareStmt, *pg_query.Node_DeallocateStmt, *pg_query.Node_LoadStmt:
		return Result{Kind: KindUnknown, Flags: FlagSessionState}
	case *pg_query.Node_ExecuteStmt, *pg_query.Node_DoStmt, *pg_query.Node_CallStmt, *pg_query.Node_LockStmt,
		*pg_query.Node_DeclareCursorStmt, *pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt,
		*pg_query.Node_VacuumStmt, *pg_query.Node_CheckPointStmt:
		return Result{Kind: KindWriteSimple}
	}
	return Result{Kind: KindDDL}
}

func isFalse(n *pg_query.Node) bool {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_String_:
		s := strings.ToLower(v.String_.GetSval())
		return s == "false" || s == "off" || s == "0"
	case *pg_query.Node_Integer:
		return v.Integer.GetIval() == 0
	case *pg_query.Node_Boolean:
		return !v.Boolean.GetBoolval()
	case *pg_query.Node_AConst:
		if b := v.AConst.GetBoolval(); b != nil {
			return !b.GetBoolval()
		}
		if i := v.AConst.GetIval(); i != nil {
			return i.GetIval() == 0
		}
		if s := v.AConst.GetSval(); s != nil {
			x := strings.ToLower(s.GetSval())
			return x == "false" || x == "off"
		}
	}
	return false
}

func classifySelect(s *pg_query.SelectStmt) Result {
	var f treeFacts
	f.walk(s.ProtoReflect())
	switch {
	case f.writableCTE:
		return Result{Kind: KindWriteSimple}
	case f.into:
		return Result{Kind: KindWriteBulk}
	}
	r := Result{Kind: KindReadSimple, ReadOnly: true}
	if f.locking {
		r.Flags |= FlagLocking
		r.ReadOnly = false
	}
	from := s.GetFromClause()
	if f.subquery || s.GetWithClause() != nil || s.GetOp() != pg_query.SetOperation_SETOP_NONE ||
		len(from) > 1 || len(s.GetGroupClause()) > 0 || s.GetHavingClause() != nil || len(s.GetWindowClause()) > 0 ||
		len(s.GetDistinctClause()) > 0 || len(s.GetValuesLists()) > 0 {
		r.Kind = KindReadComplex
	}
	for _, f := range from {
		if f.GetRangeVar() == nil {
			r.Kind = KindReadComplex // joins, subqueries, functions
		}
	}
	return r
}

func classifyTransaction(t *pg_query.TransactionStmt) Result {
	r := Result{Kind: KindTransaction, Flags: FlagTxControl, ReadOnly: true}
	switch t.GetKind() {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
		r.Flags |= FlagTxBegin
		for _, o := range t.GetOptions() {
			if d := o.GetDefElem(); d != nil && d.GetDefname() == "transaction_read_only" && !isFalse(d.GetArg()) {
				r.Flags |= FlagReadOnlyTx
			}
		}
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		r.Flags |= FlagTxEnd
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE, pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		r.Flags |= FlagTxEnd
		r.ReadOnly = false
	}
	return r
}

// hintFlags finds kproxy routing hints kept in the normalised text.
func hintFlags(key []byte) Flags {
	s := string(key)
	var f Flags
	if strings.Contains(s, "kproxy:primary") {
		f |= FlagHintPrimary
	}
	if strings.Contains(s, "kproxy:replica") {
		f |= FlagHintReplica
	}
	return f
}
