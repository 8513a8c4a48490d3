package pool

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"go.uber.org/zap"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/internal/pgwire"
)

// ErrDBClosed is returned by statements run after DB.Close.
var ErrDBClosed = errors.New("database client is closed")

// ErrTxDone is returned by a Tx's statements once its function has
// returned.
var ErrTxDone = errors.New("transaction has already been committed or rolled back")

// ErrTxControl is returned for BEGIN, COMMIT, ROLLBACK and their kin inside
// a Tx, which owns its transaction's beginning and end. SAVEPOINT and
// ROLLBACK TO SAVEPOINT are allowed.
var ErrTxControl = errors.New("transaction control statements are not allowed inside Tx; return from its function instead")

// ErrTxAborted is returned by Tx when its function returned nil although a
// statement had failed: Postgres rolled the transaction back instead of
// committing it. It wraps the first statement error.
var ErrTxAborted = errors.New("transaction was rolled back because a statement failed")

// ErrTxEnded is returned by Tx when the server left the transaction before
// Tx ended it (a procedure that committed, say): what was done is unknown
// to Tx.
var ErrTxEnded = errors.New("transaction ended before Tx committed it")

// ErrOpenTransaction is returned for a statement outside Tx that left a
// transaction open (a lone BEGIN, say). The transaction was rolled back:
// use Tx.
var ErrOpenTransaction = errors.New("statement left a transaction open; it was rolled back (use Tx)")

// ErrCopy is returned for COPY … FROM STDIN and COPY … TO STDOUT, which
// need a client data stream the in-process client does not offer.
var ErrCopy = errors.New("COPY from or to the client is not supported in-process")

// ErrConnLost is returned (wrapped, with the cause) when the server
// connection failed during a statement. Outside a transaction on a
// replica the statement is first run again on the primary; inside Tx, or
// for a write, what the server did is unknown.
var ErrConnLost = errors.New("server connection lost")

// dbClassifierShapes bounds the statement shapes a library-mode DB's
// classifier caches.
const dbClassifierShapes = 10000

// dbStatements bounds the statement names and descriptions a DB keeps.
const dbStatements = 10000

// cancelWait bounds how long a cancelled statement may take to return to
// ReadyForQuery after the cancel request (and how long the request itself
// may take) before its connection is closed.
const cancelWait = 3 * time.Second

// cleanupWait bounds the statements kproxy runs on a connection of its own
// accord after the caller's statement (ROLLBACK, DISCARD ALL).
const cleanupWait = 10 * time.Second

// maxPooledBuf bounds the write buffers a DB keeps for reuse.
const maxPooledBuf = 64 << 10

// lsnSQL reads where the primary's WAL ends, for read-your-writes; it runs
// after the write committed.
const lsnSQL = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text"

// DB runs statements in-process on a Cluster's pools: classified, routed
// (reads to caught-up replicas, the rest to the primary) and pooled like a
// network client's, with no socket hop to kproxy. It is what the workflow
// runtime uses. It is safe for concurrent use.
//
// A statement with arguments is prepared on the server connection under
// the name the proxy gives it (StatementName), so in-process and network
// clients share one server statement per connection; one without
// arguments goes through the simple protocol in one round trip. Every
// statement is read to ReadyForQuery before its connection goes back to
// the pool; a connection in an unknown state (an I/O error, a cancel the
// server did not answer in time) is closed instead.
//
// Statements run through Sessions; DB's own Query, Exec and Tx use one
// DB-wide Session. Server session state does not outlive a statement (or a
// Tx): a connection whose session a statement changed (SET, LISTEN,
// temporary tables, session advisory locks, WITH HOLD cursors) is reset
// with DISCARD ALL before it goes back to the pool. Use SET LOCAL inside
// a Tx for settings.
type DB struct {
	cluster    *Cluster
	classifier *classify.Classifier
	log        *zap.Logger
	database   string
	user       string
	owned      bool // OpenDB built cluster; Close closes it

	// stmts maps SQL text to its server statement and description.
	stmts *lru.Cache[string, *dbStmt]
	// maps holds *pgtype.Map values, which are not safe for concurrent use.
	maps sync.Pool
	// bufs holds *[]byte write buffers.
	bufs sync.Pool
	def  *Session

	closed    atomic.Bool
	closeOnce sync.Once

	// Library mode with replicas reloads the primary's volatile functions
	// into the classifier after DDL: refresh asks, stop ends the loop,
	// done says it ended. refresh is nil when there is no loop.
	refresh chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

// OpenDB returns a DB in library mode: it builds and owns a Cluster for
// cfg (see NewCluster) and a classifier that treats cfg's
// routing.read_only_functions as reads, and runs statements as user on
// database (as a network client would name them). With replicas
// configured, OpenDB loads the primary's volatile functions for the
// classifier before it returns (a failure is logged, and the shapes are
// learned from replica refusals instead) and reloads them after DDL run
// through the DB; cancelling ctx abandons that first load. cfg must have
// passed validation and must not be modified
// afterwards. Close closes the cluster.
func OpenDB(ctx context.Context, cfg *config.Config, log *zap.Logger, database, user string) (*DB, error) {
	c := NewCluster(cfg, log)
	if _, err := c.Primary(database, user); err != nil {
		c.Close()
		return nil, fmt.Errorf("open in-process client: %w", err)
	}
	db := newDB(c, classify.New(dbClassifierShapes, cfg.Routing.ReadOnlyFunctions), log, database, user)
	db.owned = true
	if len(cfg.Replicas) > 0 {
		lctx, cancel := context.WithTimeout(ctx, cleanupWait)
		db.loadVolatileFunctions(lctx)
		cancel()
		loopCtx, stop := context.WithCancel(context.Background())
		db.refresh = make(chan struct{}, 1)
		db.stop = stop
		db.done = make(chan struct{})
		go db.refreshFunctions(loopCtx)
	}
	return db, nil
}

// NewDB returns a DB in hosted mode: it shares kproxy's cluster and
// classifier (what one learns from a replica's refusal, the other knows),
// and runs statements as user on database. A nil classifier gets one of
// the DB's own that treats the cluster's routing.read_only_functions as
// reads (and learns volatile functions only from replica refusals). Close does not close the cluster or the classifier; the caller
// keeps both alive until the DB is closed.
func NewDB(c *Cluster, cl *classify.Classifier, database, user string) *DB {
	if cl == nil {
		c.mu.Lock()
		funcs := c.cfg.Routing.ReadOnlyFunctions
		c.mu.Unlock()
		cl = classify.New(dbClassifierShapes, funcs)
	}
	return newDB(c, cl, c.log, database, user)
}

func newDB(c *Cluster, cl *classify.Classifier, log *zap.Logger, database, user string) *DB {
	stmts, err := lru.New[string, *dbStmt](dbStatements)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	db := &DB{
		cluster: c, classifier: cl, database: database, user: user, stmts: stmts,
		log: log.With(zap.String("database", database), zap.String("user", user), zap.String("client", "in-process")),
	}
	db.maps.New = func() any { return pgtype.NewMap() }
	db.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	db.def = db.Session()
	return db
}

// Close makes further statements fail with ErrDBClosed. In library mode it
// stops reloading volatile functions and closes the cluster; in hosted mode
// it leaves the cluster and classifier alone. Statements under way finish
// (library mode: their connections are closed when they end). Close is
// idempotent and always returns nil.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.closed.Store(true)
		if db.stop != nil {
			db.stop()
			<-db.done
		}
		if db.owned {
			db.cluster.Close()
		}
	})
	return nil
}

// Cluster returns the cluster the DB runs on.
func (db *DB) Cluster() *Cluster { return db.cluster }

// Session returns a new consistency scope, like one client connection:
// reads through it never see data older than its own committed writes
// (read-your-writes). Sessions cost nothing to keep and need no closing.
func (db *DB) Session() *Session { return &Session{db: db} }

// Query runs sql with args in the DB-wide Session; see Session.Query.
func (db *DB) Query(ctx context.Context, sql string, args ...any) (*Result, error) {
	return db.def.Query(ctx, sql, args...)
}

// Exec runs sql with args in the DB-wide Session; see Session.Exec.
func (db *DB) Exec(ctx context.Context, sql string, args ...any) (*Result, error) {
	return db.def.Exec(ctx, sql, args...)
}

// Tx runs fn in a transaction in the DB-wide Session; see Session.Tx.
func (db *DB) Tx(ctx context.Context, fn func(tx *Tx) error) error { return db.def.Tx(ctx, fn) }

// loadVolatileFunctions gives the classifier the primary's volatile
// functions, whose calls must run on the primary.
func (db *DB) loadVolatileFunctions(ctx context.Context) {
	uf, err := db.cluster.UserFunctions(ctx)
	if err != nil {
		db.log.Warn("could not load volatile functions from the primary", zap.Error(err))
		return
	}
	db.classifier.SetVolatileFunctions(uf.Volatile)
}

// refreshFunctions reloads the volatile functions whenever asked, until
// ctx is cancelled.
func (db *DB) refreshFunctions(ctx context.Context) {
	defer close(db.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-db.refresh:
		}
		lctx, cancel := context.WithTimeout(ctx, cleanupWait)
		db.loadVolatileFunctions(lctx)
		cancel()
	}
}

// requestRefresh asks for the volatile functions to be reloaded, after DDL
// committed (it may have created or changed a function).
func (db *DB) requestRefresh() {
	if db.refresh == nil {
		return
	}
	select {
	case db.refresh <- struct{}{}:
	default:
	}
}

// Result is the outcome of one statement. Columns and Rows are those of
// the statement's result set (for a script of several statements, of its
// last statement); Tag is the command tag ("INSERT 0 1", "SELECT 3") and
// RowsAffected the count in it. The Result belongs to the caller.
//
// Values are decoded by column type into natural Go values: NULL → nil;
// int2, int4, int8 and oid → int64; float4, float8 → float64; bool; bytea
// → []byte; date, timestamp and timestamptz → time.Time (timestamptz in
// the local time zone; ±infinity as the string "infinity" or "-infinity"); json and jsonb → what encoding/json
// makes of them (map[string]any, []any, float64, string, bool); arrays of
// these → []any (flattened). Everything else, numeric, uuid, interval and
// text types included, is its text form as a string.
type Result struct {
	Columns      []string
	Rows         [][]any
	Tag          string
	RowsAffected int64
}

// Maps returns the rows as maps from column name to value. When several
// columns share a name, the last one wins.
func (r *Result) Maps() []map[string]any {
	out := make([]map[string]any, len(r.Rows))
	for i, row := range r.Rows {
		m := make(map[string]any, len(r.Columns))
		for j, c := range r.Columns {
			if j < len(row) {
				m[c] = row[j]
			}
		}
		out[i] = m
	}
	return out
}

// Session is a consistency scope of a DB, like one client connection: after
// a write through it commits, its reads go only to replicas that have
// replayed that write (or to the primary). It is safe for concurrent use;
// read-your-writes holds for a read that starts after the write returned.
type Session struct {
	db *DB
	// minLSN is where the primary's WAL ended after the session's last
	// committed write.
	minLSN atomic.Uint64
	// lsnUnknown is set when a commit's position could not be read: the
	// session's reads go to the primary until a later one is.
	lsnUnknown atomic.Bool
}

// MinLSN returns the WAL position the session's reads must see: where the
// primary's WAL ended after its last committed write, 0 before any.
func (s *Session) MinLSN() LSN { return LSN(s.minLSN.Load()) }

// noteLSN records the position of a commit.
func (s *Session) noteLSN(l LSN) {
	for {
		old := s.minLSN.Load()
		if uint64(l) <= old || s.minLSN.CompareAndSwap(old, uint64(l)) {
			break
		}
	}
	s.lsnUnknown.Store(false)
}

// Query runs sql with args and returns its rows. A read-only statement
// (as the classifier sees it) goes to a replica that has replayed the
// session's last write, or to the primary; anything else to the primary.
// With args, sql is one statement, prepared on the server connection under
// the name network clients share (StatementName) and run with the extended
// protocol; args are encoded for the parameter types the server inferred
// (a string is always sent as text for the server to parse). Without
// args, sql may be a script of several statements, run with the simple
// protocol as one implicit transaction.
//
// A Postgres error is returned as a *pgconn.PgError (SQLSTATE in Code);
// the connection stays in the pool. When a replica refuses the statement as a
// write (25006), is shutting down or loses its connection before
// answering, the statement runs again on the primary, and a refused shape
// is learned by the classifier. Cancelling ctx cancels the statement on
// the server; the error then wraps ctx.Err().
func (s *Session) Query(ctx context.Context, sql string, args ...any) (*Result, error) {
	return s.run(ctx, sql, args, true)
}

// Exec is Query for statements whose rows are not wanted: they are read
// and dropped undecoded (Result.Rows is empty).
func (s *Session) Exec(ctx context.Context, sql string, args ...any) (*Result, error) {
	return s.run(ctx, sql, args, false)
}

// readOnlyRoute reports whether a statement classified r may run on a
// replica: a read without a /* kproxy:primary */ hint.
func readOnlyRoute(r classify.Result) bool {
	return r.ReadOnly && r.Flags&classify.FlagHintPrimary == 0
}

// needsReset reports whether sql may leave server session state behind
// that the next holder of the connection must not inherit.
func needsReset(sql string) bool {
	sc := classify.ScanSession(sql)
	return sc.Settings || sc.Pin != classify.EffectNone || sc.DropsAllStatements
}

func (s *Session) run(ctx context.Context, sql string, args []any, keepRows bool) (*Result, error) {
	db := s.db
	if db.closed.Load() {
		return nil, ErrDBClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cr := db.classifier.Classify(sql)
	readOnly := readOnlyRoute(cr)
	var st *dbStmt
	if len(args) > 0 {
		st = db.stmt(sql)
	}
	c := db.cluster
	readOnPrimary, replayed, healed := false, false, false
	for {
		target, conn, err := s.attach(ctx, readOnly && !readOnPrimary && !s.lsnUnknown.Load())
		if err != nil {
			return nil, err
		}
		if conn.Learning() {
			conn.NoteStatement(cr.Fingerprint, sql)
		}
		wrote := !readOnly && !target.Replica()
		out := db.execute(ctx, conn, request{sql: sql, args: args, st: st, keepRows: keepRows, readLSN: wrote})
		replayable := target.Replica() && !replayed && ctx.Err() == nil && out.argErr == nil

		if out.ioErr != nil || (out.pgErr != nil && connGoing(out.pgErr)) {
			failed := out.ioErr
			if failed == nil {
				failed = out.pgErr
			}
			conn.MarkBroken()
			conn.Release()
			if ctx.Err() != nil {
				target.Done(c, nil) // our cancel, not the server's fault
			} else {
				target.Done(c, failed)
			}
			if replayable {
				replayed, readOnPrimary = true, true
				c.NoteReplayed(true)
				db.log.Info("a replica's connection failed before it answered; running the statement on the primary", zap.Error(failed))
				continue
			}
			return nil, lostErr(ctx, failed)
		}
		if replayable && out.pgErr != nil && out.pgErr.Code == codeReadOnlyTransaction {
			_ = s.finish(ctx, conn, out, sql, cr) // releases conn
			target.Done(c, nil)
			c.NoteReplayed(false)
			learned := db.classifier.Classify(sql).ReadOnly && db.classifier.Learn(sql)
			db.log.Info("a replica refused a statement as a write; running it on the primary", zap.Bool("shape_learned", learned))
			replayed, readOnly = true, false
			continue
		}
		err = s.finish(ctx, conn, out, sql, cr)
		target.Done(c, nil)
		if out.stale && !healed && out.ioErr == nil && ctx.Err() == nil {
			healed = true // prepared afresh on the next attempt
			continue
		}
		if cr.Kind == classify.KindDDL && out.pgErr == nil {
			db.requestRefresh()
		}
		if wrote && out.pgErr == nil && out.status == pgwire.TxIdle {
			s.commitPosition(ctx, out)
		}
		if err != nil {
			return nil, err
		}
		return out.res, nil
	}
}

// finish cleans up after a statement outside a transaction whose
// connection survived: a transaction left open is rolled back, a changed
// session reset, and the connection released. It returns the statement's
// error, if any.
func (s *Session) finish(ctx context.Context, conn *Conn, out outcome, sql string, cr classify.Result) error {
	err := out.err(ctx)
	openTx := out.status != 0 && out.status != pgwire.TxIdle
	// A read-only statement cannot change the session: SET, set_config,
	// LISTEN, temporary tables, advisory locks and cursors are not reads.
	reset := !cr.ReadOnly && needsReset(sql)
	if openTx || reset {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
		defer cancel()
		if openTx {
			if rerr := conn.Exec(cctx, "ROLLBACK"); rerr != nil {
				conn.MarkBroken()
			}
			if err == nil {
				err = ErrOpenTransaction
			}
		}
		if reset && !conn.broken {
			if rerr := conn.Reset(cctx); rerr != nil {
				conn.MarkBroken()
			}
		}
	}
	conn.Release()
	return err
}

// commitPosition records where the primary's WAL ended after a committed
// write: read on the same connection in the same round trip, or failing
// that on another connection to the primary (any position read after the
// commit returned is at or past it). When neither works, the session reads
// on the primary until a later write's position is known.
func (s *Session) commitPosition(ctx context.Context, out outcome) {
	if out.lsn != 0 {
		s.noteLSN(out.lsn)
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
	defer cancel()
	if l, err := s.db.primaryLSN(cctx); err == nil {
		s.noteLSN(l)
		return
	}
	s.lsnUnknown.Store(true)
}

// primaryLSN reads the primary's WAL insert position on a pooled
// connection.
func (db *DB) primaryLSN(ctx context.Context) (LSN, error) {
	p, err := db.cluster.Primary(db.database, db.user)
	if err != nil {
		return 0, err
	}
	conn, err := db.acquire(ctx, p)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	sets, err := conn.Query(ctx, lsnSQL)
	if err != nil {
		return 0, err
	}
	if len(sets) != 1 || len(sets[0]) != 1 || len(sets[0][0]) != 1 {
		return 0, errors.New("unexpected answer to the WAL position query")
	}
	return ParseLSN(sets[0][0][0])
}

// attach routes a statement and returns a connection for it, following
// the proxy's rules: a replica that cannot give a connection, or has not
// replayed the session's last write, sends the statement to the primary.
func (s *Session) attach(ctx context.Context, readOnly bool) (Target, *Conn, error) {
	db, c := s.db, s.db.cluster
	minLSN := LSN(0)
	if readOnly {
		minLSN = s.MinLSN()
	}
	target, err := c.Route(db.database, db.user, readOnly, minLSN)
	if err != nil {
		return Target{}, nil, err
	}
	conn, err := db.acquire(ctx, target.Pool)
	switch {
	case err != nil && target.Replica() && ctx.Err() == nil:
		// The replica is down or busy: read on the primary. Only a failure
		// to connect counts against the replica's health.
		failed := err
		if errors.Is(err, ErrAcquireTimeout) {
			failed = nil
		}
		target.Done(c, failed)
		db.log.Info("no replica connection; reading on the primary", zap.Error(err))
		return s.attachPrimary(ctx)
	case err != nil:
		target.Done(c, nil)
		return Target{}, nil, err
	case !c.ReplayedOn(ctx, target, conn):
		// The replica has not caught up with the session's last write.
		conn.Release()
		target.Done(c, nil)
		if err := ctx.Err(); err != nil {
			return Target{}, nil, err
		}
		return s.attachPrimary(ctx)
	}
	return target, conn, nil
}

func (s *Session) attachPrimary(ctx context.Context) (Target, *Conn, error) {
	target, err := s.db.cluster.Route(s.db.database, s.db.user, false, 0)
	if err != nil {
		return Target{}, nil, err
	}
	conn, err := s.db.acquire(ctx, target.Pool)
	if err != nil {
		return Target{}, nil, err
	}
	return target, conn, nil
}

// acquire takes a connection from p with no session settings of a client
// on it (preferring one that has none, else resetting them).
func (db *DB) acquire(ctx context.Context, p *Pool) (*Conn, error) {
	conn, err := p.AcquirePreferring(ctx, "")
	if err != nil {
		return nil, err
	}
	if conn.HasSettings("") {
		return conn, nil
	}
	if err := conn.Sync(ctx, nil); err != nil {
		conn.Release() // Sync marked it broken
		return nil, err
	}
	return conn, nil
}

// Tx runs fn in a transaction on the primary, on one server connection
// held until fn returns: BEGIN is sent with the first statement, COMMIT
// when fn returns nil, ROLLBACK when it returns an error (which Tx then
// returns) or panics (Tx rolls back and panics again). A statement error
// does not end fn, but Postgres refuses further statements of the
// transaction (25P02) until a ROLLBACK TO SAVEPOINT; COMMIT of such a
// transaction rolls back, and Tx returns ErrTxAborted. After a commit
// that wrote, the Session's reads see the transaction's writes.
//
// Cancelling ctx cancels the statement running at the time; ROLLBACK
// still runs, on a context of its own. A ctx cancelled by the time fn
// returns nil rolls back, and Tx returns ctx.Err().
func (s *Session) Tx(ctx context.Context, fn func(tx *Tx) error) (err error) {
	db := s.db
	if db.closed.Load() {
		return ErrDBClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	target, conn, err := s.attachPrimary(ctx)
	if err != nil {
		return err
	}
	tx := &Tx{s: s, conn: conn, target: target, status: pgwire.TxIdle}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.end(ctx, false)
			panic(p)
		}
	}()
	if ferr := fn(tx); ferr != nil {
		_ = tx.end(ctx, false)
		return ferr
	}
	if err := ctx.Err(); err != nil {
		_ = tx.end(ctx, false)
		return err
	}
	return tx.end(ctx, true)
}

// Tx is a transaction in progress, valid until the function given to
// Session.Tx returns. It is safe for concurrent use; its statements run
// one at a time.
type Tx struct {
	s      *Session
	target Target

	mu       sync.Mutex
	conn     *Conn           // guarded by mu
	status   byte            // guarded by mu; the server's transaction status
	begun    bool            // guarded by mu; BEGIN has run
	done     bool            // guarded by mu; committed or rolled back
	lost     error           // guarded by mu; the connection failed
	ended    bool            // guarded by mu; the server left the transaction early
	wrote    bool            // guarded by mu; a statement was not read-only
	reset    bool            // guarded by mu; a statement changed the server session
	ddl      bool            // guarded by mu; a statement was DDL
	firstErr *pgconn.PgError // guarded by mu; the first statement error
	noted    bool            // guarded by mu; the workload learner has the first statement
}

// Query runs sql with args inside the transaction; see Session.Query for
// arguments, results and errors. Nothing is routed: the transaction runs
// on the primary.
func (tx *Tx) Query(ctx context.Context, sql string, args ...any) (*Result, error) {
	return tx.run(ctx, sql, args, true)
}

// Exec is Query for statements whose rows are not wanted.
func (tx *Tx) Exec(ctx context.Context, sql string, args ...any) (*Result, error) {
	return tx.run(ctx, sql, args, false)
}

func (tx *Tx) run(ctx context.Context, sql string, args []any, keepRows bool) (*Result, error) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	switch {
	case tx.done:
		return nil, ErrTxDone
	case tx.lost != nil:
		return nil, tx.lost
	case tx.ended:
		return nil, ErrTxEnded
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	db := tx.s.db
	cr := db.classifier.Classify(sql)
	if cr.Flags&(classify.FlagTxBegin|classify.FlagTxEnd) != 0 {
		return nil, ErrTxControl
	}
	if tx.status == pgwire.TxFailed && cr.Flags&classify.FlagTxControl == 0 {
		return nil, &pgconn.PgError{Severity: "ERROR", Code: "25P02",
			Message: "current transaction is aborted, commands ignored until end of transaction block"}
	}
	if !tx.noted && tx.conn.Learning() {
		tx.conn.NoteStatement(cr.Fingerprint, sql)
	}
	tx.noted = true
	tx.wrote = tx.wrote || !cr.ReadOnly
	tx.reset = tx.reset || (!cr.ReadOnly && needsReset(sql))
	tx.ddl = tx.ddl || cr.Kind == classify.KindDDL
	var st *dbStmt
	if len(args) > 0 {
		st = db.stmt(sql)
	}
	out := db.execute(ctx, tx.conn, request{sql: sql, args: args, st: st, keepRows: keepRows, begin: !tx.begun})
	if out.ioErr != nil || (out.pgErr != nil && connGoing(out.pgErr)) {
		failed := out.ioErr
		if failed == nil {
			failed = out.pgErr
		}
		tx.conn.MarkBroken()
		tx.lost = lostErr(ctx, failed)
		return nil, tx.lost
	}
	if out.status != 0 {
		switch {
		case out.status != pgwire.TxIdle:
			tx.begun = true
		case tx.begun:
			tx.ended = true
		}
		tx.status = out.status
	}
	if out.pgErr != nil && tx.firstErr == nil {
		tx.firstErr = out.pgErr
	}
	if err := out.err(ctx); err != nil {
		return nil, err
	}
	if tx.ended {
		return out.res, ErrTxEnded
	}
	return out.res, nil
}

// end commits or rolls back the transaction and releases its connection.
func (tx *Tx) end(ctx context.Context, commit bool) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.done {
		return nil
	}
	tx.done = true
	s, db, conn := tx.s, tx.s.db, tx.conn
	defer func() {
		conn.Release()
		tx.target.Done(db.cluster, nil)
	}()
	if tx.lost != nil {
		return tx.lost
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
	defer cancel()
	var err error
	switch {
	case tx.ended:
		err = ErrTxEnded
	case !tx.begun:
	case commit:
		out := db.execute(ctx, conn, request{sql: "COMMIT", keepRows: false, readLSN: tx.wrote})
		switch {
		case out.ioErr != nil:
			conn.MarkBroken()
			return fmt.Errorf("commit outcome unknown: %w", lostErr(ctx, out.ioErr))
		case out.pgErr != nil:
			err = out.err(ctx)
		case out.res.Tag == "ROLLBACK":
			err = ErrTxAborted
			if tx.firstErr != nil {
				err = fmt.Errorf("%w: %w", ErrTxAborted, tx.firstErr)
			}
		case tx.wrote:
			s.commitPosition(ctx, out)
		}
		if out.status != pgwire.TxIdle {
			conn.MarkBroken()
		}
	default:
		out := db.execute(cctx, conn, request{sql: "ROLLBACK"})
		if out.ioErr != nil || out.pgErr != nil || out.status != pgwire.TxIdle {
			conn.MarkBroken()
		}
	}
	if tx.reset && !conn.broken {
		if rerr := conn.Reset(cctx); rerr != nil {
			conn.MarkBroken()
		}
	}
	if tx.ddl && commit && err == nil {
		db.requestRefresh()
	}
	return err
}

// SQLSTATEs the client acts on.
const (
	codeReadOnlyTransaction = "25006" // a replica refused a write
	codeAdminShutdown       = "57P01"
	codeCrashShutdown       = "57P02"
	codeCannotConnectNow    = "57P03"
	codeQueryCanceled       = "57014"
	codeFeatureNotSupported = "0A000" // "cached plan must not change result type"
	codeInvalidBinaryFormat = "22P03" // the statement's parameter types changed
	codeNoSuchStatement     = "26000"
)

// connGoing reports whether the server said it is closing the connection.
func connGoing(e *pgconn.PgError) bool {
	switch e.Code {
	case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow:
		return true
	}
	sev := e.SeverityUnlocalized
	if sev == "" {
		sev = e.Severity
	}
	return sev == "FATAL" || sev == "PANIC"
}

// lostErr describes a connection failure; when ctx was cancelled (the
// server did not answer the cancel in time) it wraps ctx.Err() too.
func lostErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %w: %w", cerr, ErrConnLost, err)
	}
	return fmt.Errorf("%w: %w", ErrConnLost, err)
}

// StatementName returns the name kproxy gives, on server connections, to
// the statement query prepared with parameter types paramTypes (a Parse
// message's raw count and OIDs) in a session whose search_path setting is
// searchPath ("" when the session did not set it). It is a hash of the
// three, so that every client preparing the same statement, network or
// in-process, shares one server statement per connection.
func StatementName(query string, paramTypes []byte, searchPath string) string {
	h := sha256.New()
	h.Write([]byte(query))
	h.Write([]byte{0})
	h.Write(paramTypes)
	h.Write([]byte(searchPath))
	sum := h.Sum(nil)
	return statementPrefix + hex.EncodeToString(sum[:16])
}

// statementPrefix marks the statements kproxy prepares on server
// connections.
const statementPrefix = "kp_"

// dbStmt is the server statement for one SQL text with arguments.
type dbStmt struct {
	name string
	// desc is what Describe said about the statement, nil until known or
	// after the server refused to reuse it.
	desc atomic.Pointer[stmtDesc]
}

// stmtDesc describes a prepared statement: its parameter types and result
// columns, and the result formats the client asks for. It is not modified
// once stored.
type stmtDesc struct {
	paramOIDs []uint32
	columns   []string
	oids      []uint32 // column types
	formats   []int16  // each column's result format
	bindFmts  []int16  // the result formats as Bind sends them
}

func (db *DB) stmt(sql string) *dbStmt {
	if st, ok := db.stmts.Get(sql); ok {
		return st
	}
	// The client's Parse leaves every parameter type to the server (a
	// count of 0), and its connections have the default search_path.
	st := &dbStmt{name: StatementName(sql, []byte{0, 0}, "")}
	if prev, ok, _ := db.stmts.PeekOrAdd(sql, st); ok {
		return prev
	}
	return st
}

func newStmtDesc(paramOIDs []uint32, fields []pgproto3.FieldDescription) *stmtDesc {
	d := &stmtDesc{paramOIDs: paramOIDs, columns: make([]string, len(fields)),
		oids: make([]uint32, len(fields)), formats: make([]int16, len(fields))}
	binaries := 0
	for i, f := range fields {
		d.columns[i] = string(f.Name)
		d.oids[i] = f.DataTypeOID
		if binaryResult(f.DataTypeOID) {
			d.formats[i] = pgtype.BinaryFormatCode
			binaries++
		}
	}
	switch binaries {
	case 0: // no codes: all text
	case len(fields):
		d.bindFmts = []int16{pgtype.BinaryFormatCode}
	default:
		d.bindFmts = d.formats
	}
	return d
}

// request is one statement for execute.
type request struct {
	sql      string
	args     []any
	st       *dbStmt // with args: the server statement; nil: simple protocol
	keepRows bool
	begin    bool // start a transaction block first, atomically with the statement
	readLSN  bool // read the primary's WAL position after the statement
}

// outcome is what execute saw.
type outcome struct {
	res       *Result
	pgErr     *pgconn.PgError // the first error the server reported
	argErr    error           // the arguments could not be encoded; the statement did not run
	decodeErr error           // a value could not be decoded; the statement ran
	copyErr   bool            // the statement was a COPY from or to the client
	ioErr     error           // the connection failed; it is marked broken
	// status is the transaction status at the last ReadyForQuery, 0 when
	// nothing was sent.
	status byte
	lsn    LSN  // with readLSN: the WAL position, 0 if not read
	stale  bool // the server statement must be prepared afresh
}

// err returns the statement's error for the caller.
func (o *outcome) err(ctx context.Context) error {
	switch {
	case o.argErr != nil:
		return o.argErr
	case o.copyErr && o.pgErr != nil:
		return fmt.Errorf("%w: %w", ErrCopy, o.pgErr)
	case o.pgErr != nil && o.pgErr.Code == codeQueryCanceled && ctx.Err() != nil:
		return fmt.Errorf("%w: %w", ctx.Err(), o.pgErr)
	case o.pgErr != nil:
		return o.pgErr
	case o.copyErr:
		return ErrCopy
	case o.decodeErr != nil:
		return o.decodeErr
	}
	return nil
}

// step is one message of an extended-protocol batch, in the order the
// server answers them.
type step uint8

const (
	stepBeginParse step = iota // BEGIN, into the unnamed statement
	stepBeginBind
	stepBeginExec
	stepClose // Close of a statement being replaced
	stepParse
	stepDescribe
	stepBind
	stepExec
)

// segment is the part of a batch up to a Sync or a Query, answered up to a
// ReadyForQuery.
type segment struct {
	steps  []step   // extended protocol (non-nil); nil for a Query
	stepsA [8]step  // backs steps
	closes []string // names of the stepClose steps, in order
	st     *dbStmt  // the statement of stepParse, stepDescribe and stepExec
	desc   *stmtDesc
	rows   bool // keep rows
	lsn    bool // the Query reads the WAL position

	// What came back.
	done      int // steps answered without error
	res       Result
	pgErr     *pgconn.PgError
	decodeErr error
	copyErr   bool
	status    byte
	paramOIDs []uint32
	fields    []pgproto3.FieldDescription
	lsnValue  LSN
}

// execute runs one statement on conn, which the caller holds, and reads
// every answer up to the last ReadyForQuery unless the connection fails
// (ioErr; the connection is then marked broken).
func (db *DB) execute(ctx context.Context, conn *Conn, req request) outcome {
	m := db.maps.Get().(*pgtype.Map)
	defer db.maps.Put(m)
	bp := db.bufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledBuf {
			db.bufs.Put(bp)
		}
	}()
	if req.st == nil {
		return db.executeSimple(ctx, conn, req, bp, m)
	}

	st := req.st
	desc := st.desc.Load()
	var status byte
	if prepared := conn.HasPrepared(st.name); desc == nil || !prepared {
		// First round trip: prepare and describe (BEGIN with it). The
		// description is read afresh whenever the statement is parsed, so
		// that arguments and rows follow the connection's statement.
		seg := &segment{st: st}
		seg.steps = seg.stepsA[:0]
		b := (*bp)[:0]
		if req.begin {
			b = appendBegin(b, seg)
			conn.SetUnnamedOwner(nil)
		}
		if !prepared {
			if conn.IsStale(st.name) {
				b = appendClose(b, seg, st.name)
			}
			for _, old := range conn.AddPrepared(st.name) {
				b = appendClose(b, seg, old)
			}
			b, _ = (&pgproto3.Parse{Name: st.name, Query: req.sql}).Encode(b)
			seg.steps = append(seg.steps, stepParse)
		}
		b, _ = (&pgproto3.Describe{ObjectType: 'S', Name: st.name}).Encode(b)
		seg.steps = append(seg.steps, stepDescribe)
		b, _ = (&pgproto3.Sync{}).Encode(b)
		*bp = b
		if err := db.exchange(ctx, conn, b, []*segment{seg}, m); err != nil {
			return outcome{ioErr: err}
		}
		if seg.pgErr != nil {
			return outcomeOf(conn, []*segment{seg})
		}
		desc = newStmtDesc(seg.paramOIDs, seg.fields)
		st.desc.Store(desc)
		req.begin = false
		status = seg.status
	}

	// The statement itself (with BEGIN when not sent yet), then the WAL
	// position.
	exec := &segment{st: st, desc: desc, rows: req.keepRows}
	exec.steps = exec.stepsA[:0]
	b := (*bp)[:0]
	if req.begin {
		b = appendBegin(b, exec)
	}
	b, err := appendBind(b, m, st.name, desc, req.args)
	if err != nil {
		*bp = b
		return outcome{argErr: err, status: status}
	}
	if req.begin {
		conn.SetUnnamedOwner(nil)
	}
	exec.steps = append(exec.steps, stepBind)
	b, _ = (&pgproto3.Execute{}).Encode(b)
	exec.steps = append(exec.steps, stepExec)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	*bp = b
	return db.exchangeWithLSN(ctx, conn, bp, exec, req, m)
}

// exchangeWithLSN sends *bp, the statement of segment stmt, and reads its
// answer; with req.readLSN it then reads the primary's WAL position in its
// own implicit transaction, in the same round trip unless the statement
// may be a COPY FROM STDIN (the server would take the pipelined query for
// copy data).
func (db *DB) exchangeWithLSN(ctx context.Context, conn *Conn, bp *[]byte, stmt *segment, req request, m *pgtype.Map) outcome {
	segs := []*segment{stmt}
	pipelined := req.readLSN && !mayCopy(req.sql)
	if pipelined {
		*bp, _ = (&pgproto3.Query{String: lsnSQL}).Encode(*bp)
		conn.SetUnnamedOwner(nil)
		segs = append(segs, &segment{lsn: true})
	}
	if err := db.exchange(ctx, conn, *bp, segs, m); err != nil {
		return outcome{ioErr: err}
	}
	if req.readLSN && !pipelined && stmt.pgErr == nil && stmt.status == pgwire.TxIdle {
		lsn := &segment{lsn: true}
		b, _ := (&pgproto3.Query{String: lsnSQL}).Encode((*bp)[:0])
		*bp = b
		conn.SetUnnamedOwner(nil)
		if err := db.exchange(ctx, conn, b, []*segment{lsn}, m); err != nil {
			return outcome{ioErr: err}
		}
		segs = append(segs, lsn)
	}
	return outcomeOf(conn, segs)
}

// mayCopy reports whether sql may hold a COPY statement: whether it
// contains "copy" in any case. A false alarm costs a round trip.
func mayCopy(sql string) bool {
	for i := 0; i+4 <= len(sql); i++ {
		if sql[i]|0x20 == 'c' && sql[i+1]|0x20 == 'o' && sql[i+2]|0x20 == 'p' && sql[i+3]|0x20 == 'y' {
			return true
		}
	}
	return false
}

// executeSimple runs a statement without arguments with the simple
// protocol.
func (db *DB) executeSimple(ctx context.Context, conn *Conn, req request, bp *[]byte, m *pgtype.Map) outcome {
	sql := req.sql
	if req.begin {
		// One Query: if BEGIN fails, the statement does not run outside
		// the transaction.
		sql = "BEGIN;" + sql
	}
	*bp, _ = (&pgproto3.Query{String: sql}).Encode((*bp)[:0])
	conn.SetUnnamedOwner(nil) // a simple Query destroys the unnamed statement
	return db.exchangeWithLSN(ctx, conn, bp, &segment{rows: req.keepRows}, req, m)
}

// outcomeOf sums up the answered segments: the statement's, then perhaps
// the WAL position query's. A statement the server refused to reuse is
// marked to be prepared afresh.
func outcomeOf(conn *Conn, segs []*segment) outcome {
	stmt := segs[0]
	out := outcome{pgErr: stmt.pgErr, decodeErr: stmt.decodeErr, copyErr: stmt.copyErr,
		status: segs[len(segs)-1].status}
	if stmt.pgErr != nil && stmt.st != nil && staleStatement(stmt.pgErr) {
		out.stale = true
		conn.MarkStale(stmt.st.name)
		stmt.st.desc.Store(nil)
	}
	if len(segs) > 1 && segs[1].pgErr == nil {
		out.lsn = segs[1].lsnValue
	}
	res := stmt.res
	if stmt.desc != nil && len(stmt.desc.columns) > 0 {
		res.Columns = slices.Clone(stmt.desc.columns)
	}
	res.RowsAffected = pgconn.NewCommandTag(res.Tag).RowsAffected()
	out.res = &res
	return out
}

// staleStatement reports an error that asks for the statement to be
// prepared afresh: its result or parameter types changed under it, or the
// server no longer has it.
func staleStatement(e *pgconn.PgError) bool {
	switch e.Code {
	case codeFeatureNotSupported:
		return e.Message == "cached plan must not change result type"
	case codeInvalidBinaryFormat, codeNoSuchStatement:
		return true
	}
	return false
}

func appendBegin(b []byte, seg *segment) []byte {
	b, _ = (&pgproto3.Parse{Query: "BEGIN"}).Encode(b)
	b, _ = (&pgproto3.Bind{}).Encode(b)
	b, _ = (&pgproto3.Execute{}).Encode(b)
	seg.steps = append(seg.steps, stepBeginParse, stepBeginBind, stepBeginExec)
	return b
}

func appendClose(b []byte, seg *segment, name string) []byte {
	b, _ = (&pgproto3.Close{ObjectType: 'S', Name: name}).Encode(b)
	seg.steps = append(seg.steps, stepClose)
	seg.closes = append(seg.closes, name)
	return b
}

// appendBind appends a Bind of statement name to the unnamed portal with
// args encoded for desc's parameter types. A string is sent as text for
// the server to parse, as are values pgtype cannot encode in binary for
// the type. On error b is returned unchanged.
func appendBind(b []byte, m *pgtype.Map, name string, desc *stmtDesc, args []any) ([]byte, error) {
	if len(args) != len(desc.paramOIDs) {
		return b, fmt.Errorf("statement takes %d arguments, %d given", len(desc.paramOIDs), len(args))
	}
	if len(args) > math.MaxUint16 {
		return b, fmt.Errorf("%d arguments, at most %d", len(args), math.MaxUint16)
	}
	start := len(b)
	b = append(b, 'B', 0, 0, 0, 0, 0) // type, length, unnamed portal
	b = append(b, name...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(args)))
	formatsAt := len(b)
	for range args {
		b = append(b, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(args)))
	for i, a := range args {
		oid := desc.paramOIDs[i]
		format := int16(pgtype.TextFormatCode)
		if _, isString := a.(string); !isString {
			format = m.FormatCodeForOID(oid)
		}
		lenAt := len(b)
		b = append(b, 0, 0, 0, 0)
		v, err := m.Encode(oid, format, a, b)
		if err != nil && format == pgtype.BinaryFormatCode {
			format = pgtype.TextFormatCode
			v, err = m.Encode(oid, format, a, b)
		}
		if err != nil {
			return b[:start], fmt.Errorf("argument $%d: %w", i+1, err)
		}
		if v == nil { // NULL
			b = binary.BigEndian.AppendUint32(b[:lenAt], 0xffffffff)
		} else {
			b = v
			binary.BigEndian.PutUint32(b[lenAt:], uint32(len(b)-lenAt-4))
		}
		binary.BigEndian.PutUint16(b[formatsAt+2*i:], uint16(format))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(desc.bindFmts)))
	for _, f := range desc.bindFmts {
		b = binary.BigEndian.AppendUint16(b, uint16(f))
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-1))
	return b, nil
}

// exchange sends b and reads the answers to segs, one ReadyForQuery each,
// decoding rows with m. Cancelling ctx sends the server a cancel request;
// if the server does not then reach ReadyForQuery within cancelWait, the
// reads stop. An error is a connection failure, and the connection is
// marked broken. exchange does not return while a cancel request for the
// connection is in flight, so none can hit the connection's next holder.
func (db *DB) exchange(ctx context.Context, conn *Conn, b []byte, segs []*segment, m *pgtype.Map) error {
	stop := func() bool { return true }
	var cancelled chan struct{}
	if ctx.Done() != nil {
		cancelled = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			defer close(cancelled)
			cctx, cancel := context.WithTimeout(context.Background(), cancelWait)
			defer cancel()
			if err := conn.Cancel(cctx); err != nil {
				db.log.Info("could not send a cancel request", zap.Uint32("server_pid", conn.PID()), zap.Error(err))
			}
			_ = conn.SetReadDeadline(time.Now().Add(cancelWait))
		})
	}
	err := conn.Write(b)
	if err == nil {
		err = conn.Flush()
	}
	for _, s := range segs {
		if err != nil {
			break
		}
		err = readSegment(conn, s, m)
	}
	if !stop() {
		<-cancelled // the request has reached the server
		_ = conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		conn.MarkBroken()
	}
	return err
}

// readSegment reads the answer to seg up to its ReadyForQuery.
func readSegment(conn *Conn, seg *segment, m *pgtype.Map) error {
	failed := false  // an ErrorResponse came: the server skips to the Sync
	hadRows := false // the current statement of a Query returned rows
	for {
		t, msg, err := conn.Next()
		if err != nil {
			return err
		}
		body := msg[5:]
		switch t {
		case '1', '2', '3', 'n': // ParseComplete, BindComplete, CloseComplete, NoData
			if !failed {
				seg.done++
			}
		case 't':
			var pd pgproto3.ParameterDescription
			if err := pd.Decode(body); err != nil {
				return fmt.Errorf("malformed ParameterDescription: %w", err)
			}
			seg.paramOIDs = append([]uint32(nil), pd.ParameterOIDs...)
		case 'T':
			var rd pgproto3.RowDescription
			if err := rd.Decode(body); err != nil {
				return fmt.Errorf("malformed RowDescription: %w", err)
			}
			fields := make([]pgproto3.FieldDescription, len(rd.Fields))
			for i, f := range rd.Fields {
				f.Name = []byte(string(f.Name)) // the frame is reused
				fields[i] = f
			}
			seg.fields = fields
			if seg.steps != nil { // the answer to Describe
				if !failed {
					seg.done++
				}
				continue
			}
			hadRows = true
			seg.res.Columns = make([]string, len(fields))
			for i, f := range fields {
				seg.res.Columns[i] = string(f.Name)
			}
			seg.res.Rows = nil
		case 'D':
			if seg.lsn {
				if v, ok := firstValue(body); ok {
					if l, err := ParseLSN(string(v)); err == nil {
						seg.lsnValue = l
					}
				}
				continue
			}
			if !seg.rows || seg.decodeErr != nil {
				continue
			}
			vals, err := seg.decodeRow(m, body)
			if errors.Is(err, errMalformedRow) {
				return err
			}
			if err != nil {
				// The caller's problem, not the connection's: reported once
				// the answer is read.
				seg.decodeErr = err
				continue
			}
			seg.res.Rows = append(seg.res.Rows, vals)
		case 'C', 'I', 's': // CommandComplete, EmptyQueryResponse, PortalSuspended
			beginDone := seg.steps != nil && seg.done < len(seg.steps) && seg.steps[seg.done] == stepBeginExec
			if t == 'C' && !beginDone && !seg.lsn {
				var cc pgproto3.CommandComplete
				if err := cc.Decode(body); err != nil {
					return fmt.Errorf("malformed CommandComplete: %w", err)
				}
				seg.res.Tag = string(cc.CommandTag)
				if !hadRows && seg.steps == nil {
					seg.res.Columns, seg.res.Rows = nil, nil
				}
				conn.NoteResult(false)
			}
			hadRows = false
			if !failed {
				seg.done++
			}
		case 'E':
			var e pgproto3.ErrorResponse
			if err := e.Decode(body); err != nil {
				return fmt.Errorf("malformed ErrorResponse: %w", err)
			}
			if seg.pgErr == nil {
				seg.pgErr = pgconn.ErrorResponseToPgError(&e)
			}
			if !seg.lsn {
				conn.NoteResult(true)
			}
			failed = true
		case 'G': // COPY FROM STDIN: refuse to send data
			seg.copyErr = true
			fb, _ := (&pgproto3.CopyFail{Message: ErrCopy.Error()}).Encode(nil)
			if seg.steps != nil {
				// The server ignored the batch's Sync during the copy and
				// skips to the next one after it.
				fb, _ = (&pgproto3.Sync{}).Encode(fb)
			}
			if err := conn.Write(fb); err != nil {
				return err
			}
			if err := conn.Flush(); err != nil {
				return err
			}
		case 'H': // COPY TO STDOUT: its data is dropped
			seg.copyErr = true
		case 'd', 'c', 'N', 'A', 'S': // copy data and done, notices, notifications, parameters
		case 'Z':
			if len(body) != 1 {
				return errors.New("malformed ReadyForQuery")
			}
			seg.status = body[0]
			settle(conn, seg)
			return nil
		default:
			return fmt.Errorf("unexpected message type %q from the server", t)
		}
	}
}

// settle updates the connection's prepared-statement bookkeeping once a
// segment is answered: a statement whose Close the server skipped is
// closed later, a Parse that did not complete is forgotten, and one that
// did is known to the pool.
func settle(conn *Conn, seg *segment) {
	closeAt := 0
	for i, s := range seg.steps {
		switch s {
		case stepClose:
			if i >= seg.done {
				conn.CloseLater(seg.closes[closeAt])
			}
			closeAt++
		case stepParse:
			if i >= seg.done {
				conn.ForgetPrepared(seg.st.name)
			}
		}
	}
}

// errMalformedRow reports a DataRow whose lengths do not add up.
var errMalformedRow = errors.New("malformed DataRow")

// firstValue returns the first value of DataRow body.
func firstValue(body []byte) ([]byte, bool) {
	if len(body) < 6 || binary.BigEndian.Uint16(body) < 1 {
		return nil, false
	}
	n := int(int32(binary.BigEndian.Uint32(body[2:])))
	if n < 0 || len(body) < 6+n {
		return nil, false
	}
	return body[6 : 6+n], true
}

// decodeRow decodes the values of DataRow body by the segment's column
// types.
func (seg *segment) decodeRow(m *pgtype.Map, body []byte) ([]any, error) {
	if len(body) < 2 {
		return nil, errMalformedRow
	}
	count := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	out := make([]any, count)
	for i := range count {
		if len(body) < 4 {
			return nil, errMalformedRow
		}
		n := int(int32(binary.BigEndian.Uint32(body)))
		body = body[4:]
		var v []byte // NULL
		if n >= 0 {
			if len(body) < n {
				return nil, errMalformedRow
			}
			v, body = body[:n:n], body[n:]
		}
		var oid uint32
		format := int16(pgtype.TextFormatCode)
		switch {
		case seg.desc != nil && i < len(seg.desc.oids):
			oid, format = seg.desc.oids[i], seg.desc.formats[i]
		case i < len(seg.fields):
			oid, format = seg.fields[i].DataTypeOID, seg.fields[i].Format
		}
		x, err := decodeValue(m, oid, format, v)
		if err != nil {
			return nil, fmt.Errorf("column %d: %w", i+1, err)
		}
		out[i] = x
	}
	return out, nil
}

// binaryResult reports the column types asked for in binary: those
// decoded into Go values other than a string, bar json and jsonb.
func binaryResult(oid uint32) bool {
	switch oid {
	case pgtype.BoolOID, pgtype.ByteaOID, pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.Float4OID, pgtype.Float8OID, pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID,
		pgtype.BoolArrayOID, pgtype.ByteaArrayOID, pgtype.Int2ArrayOID, pgtype.Int4ArrayOID, pgtype.Int8ArrayOID,
		pgtype.Float4ArrayOID, pgtype.Float8ArrayOID, pgtype.TextArrayOID, pgtype.VarcharArrayOID,
		pgtype.DateArrayOID, pgtype.TimestampArrayOID, pgtype.TimestamptzArrayOID:
		return true
	}
	return false
}

// natural reports the column types decoded into Go values other than a
// string (see Result).
func natural(oid uint32) bool {
	return binaryResult(oid) || oid == pgtype.JSONOID || oid == pgtype.JSONBOID
}

// decodeValue decodes one value of type oid in format into a natural Go
// value (see Result).
func decodeValue(m *pgtype.Map, oid uint32, format int16, src []byte) (any, error) {
	if src == nil {
		return nil, nil
	}
	if !natural(oid) {
		if format == pgtype.BinaryFormatCode {
			return append([]byte(nil), src...), nil
		}
		return string(src), nil
	}
	t, ok := m.TypeForOID(oid)
	if !ok {
		return string(src), nil
	}
	v, err := t.Codec.DecodeValue(m, oid, format, src)
	if err != nil {
		return nil, err
	}
	return naturalValue(v), nil
}

func naturalValue(v any) any {
	switch x := v.(type) {
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case uint32:
		return int64(x)
	case float32:
		return float64(x)
	case pgtype.InfinityModifier:
		return x.String()
	case []any:
		for i := range x {
			x[i] = naturalValue(x[i])
		}
		return x
	}
	return v
}
