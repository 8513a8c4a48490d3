package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/kproxy/kproxy/pool"
)

// ErrUnexpectedRows fails a SQL step that affected or returned another
// number of rows than it expects; in a transaction it rolls the whole
// transaction back.
var ErrUnexpectedRows = errors.New("unexpected number of rows")

// SQL nodes run statements in-process through a pool.DB: classified and
// routed like a network client's (reads to caught-up replicas, writes and
// transactions to the primary), on the same pools and server statements.
// All SQL nodes of one run share one pool.Session, so a run reads its own
// writes.
//
// Arguments are references resolved against the node's inputs: "order_id"
// is the input order_id, "item.id" the field id of the input item (a map
// body's item), "fetch.rows.0.total" a path into the input fetch. They are
// the statement's $1, $2, … in order, encoded for the parameter types
// Postgres inferred. A list ([]any, or a result's rows) goes as an array to
// an array parameter ("WHERE id = ANY($1)"), and a list or an object
// (map[string]any) as JSON to a json or jsonb parameter and as JSON text to
// any other.

// SQLResult is the output of a SQL query or exec node. Paths into it:
// "rows" (a list of rows, each a map of column to value), "row" (the first
// row, absent when there is none), "columns", "tag", "rows_affected".
type SQLResult struct {
	Columns      []string         `json:"columns,omitempty"`
	Rows         []map[string]any `json:"rows"`
	Tag          string           `json:"tag"`
	RowsAffected int64            `json:"rows_affected"`
}

func newSQLResult(r *pool.Result) *SQLResult {
	rows := r.Maps()
	if rows == nil {
		rows = []map[string]any{}
	}
	return &SQLResult{Columns: r.Columns, Rows: rows, Tag: r.Tag, RowsAffected: r.RowsAffected}
}

// Lookup resolves the keys listed on SQLResult.
func (r *SQLResult) Lookup(key string) (any, bool) {
	switch key {
	case "rows":
		return r.Rows, true
	case "row":
		if len(r.Rows) == 0 {
			return nil, false
		}
		return r.Rows[0], true
	case "columns":
		return r.Columns, true
	case "tag":
		return r.Tag, true
	case "rows_affected":
		return r.RowsAffected, true
	}
	return nil, false
}

// RowCount is the rows returned, or for a statement that returns none the
// rows it affected.
func (r *SQLResult) RowCount() int64 {
	if len(r.Rows) > 0 {
		return int64(len(r.Rows))
	}
	return r.RowsAffected
}

// SQLStep is one statement of a SQL node. ExpectRows, when not nil, is the
// number of rows the statement must return or affect (see
// SQLResult.RowCount); otherwise the step fails with ErrUnexpectedRows.
type SQLStep struct {
	SQL  string
	Args []string
	// ExpectRows is the row count the step must have; nil accepts any.
	ExpectRows *int64
}

// Rows is a helper for SQLStep.ExpectRows.
func Rows(n int64) *int64 { return &n }

// SQLQuery returns a node that runs one statement and returns its rows as
// a *SQLResult. A read goes to a replica that has the run's writes.
func SQLQuery(db *pool.DB, sql string, args ...string) Node {
	return &sqlNode{db: db, kind: "sql_query", steps: []SQLStep{{SQL: sql, Args: args}}}
}

// SQLExec returns a node that runs one statement and returns its tag and
// affected rows as a *SQLResult, without decoding rows.
func SQLExec(db *pool.DB, sql string, args ...string) Node {
	return &sqlNode{db: db, kind: "sql_exec", exec: true, steps: []SQLStep{{SQL: sql, Args: args}}}
}

// SQLStatement returns a node that runs one step (a query, with ExpectRows
// checked).
func SQLStatement(db *pool.DB, step SQLStep) Node {
	return &sqlNode{db: db, kind: "sql_query", steps: []SQLStep{step}}
}

// SQLTx returns a node that runs steps in one transaction on the primary:
// committed when every step succeeds and has its expected rows, rolled back
// otherwise. A step's arguments may also refer to earlier steps' results as
// "steps.N…" (N from 0): "steps.0.row.total_amount" is the column
// total_amount of the first row the first step returned. The output is a
// *SQLTxResult.
func SQLTx(db *pool.DB, steps ...SQLStep) Node {
	return &sqlNode{db: db, kind: "sql_tx", tx: true, steps: steps}
}

// SQLTxResult is the output of a transaction node: each step's result, in
// order. Paths: "steps.N…" into step N's *SQLResult.
type SQLTxResult struct {
	Steps []*SQLResult `json:"steps"`
}

// Lookup resolves "steps".
func (r *SQLTxResult) Lookup(key string) (any, bool) {
	if key == "steps" {
		return r.Steps, true
	}
	return nil, false
}

// RowCount sums the steps' row counts.
func (r *SQLTxResult) RowCount() int64 {
	var n int64
	for _, s := range r.Steps {
		n += s.RowCount()
	}
	return n
}

type sqlNode struct {
	db    *pool.DB
	kind  string
	exec  bool
	tx    bool
	steps []SQLStep
}

func (n *sqlNode) Kind() string { return n.kind }

func (n *sqlNode) Validate() error {
	var errs []error
	if n.db == nil {
		errs = append(errs, errors.New("no database"))
	}
	if len(n.steps) == 0 {
		errs = append(errs, errors.New("no statements"))
	}
	for i, s := range n.steps {
		if s.SQL == "" {
			errs = append(errs, fmt.Errorf("statement %d is empty", i))
		}
		for _, a := range s.Args {
			if a == "" {
				errs = append(errs, fmt.Errorf("statement %d has an empty argument reference", i))
			}
		}
	}
	return errors.Join(errs...)
}

// sessionKey keys a run's pool.Session for a DB in Inputs.Scoped.
type sessionKey struct{ db *pool.DB }

func (n *sqlNode) session(in Inputs) *pool.Session {
	return in.Scoped(sessionKey{n.db}, func() any { return n.db.Session() }).(*pool.Session)
}

func (n *sqlNode) Run(ctx context.Context, in Inputs) (any, error) {
	s := n.session(in)
	if !n.tx {
		step := n.steps[0]
		args, err := resolveArgs(in, nil, step.Args)
		if err != nil {
			return nil, err
		}
		var r *pool.Result
		if n.exec {
			r, err = s.Exec(ctx, step.SQL, args...)
		} else {
			r, err = s.Query(ctx, step.SQL, args...)
		}
		if err != nil {
			return nil, sqlError(err)
		}
		res := newSQLResult(r)
		if err := checkRows(0, step, res); err != nil {
			return nil, Permanent(err)
		}
		return res, nil
	}
	out := &SQLTxResult{Steps: make([]*SQLResult, 0, len(n.steps))}
	err := s.Tx(ctx, func(tx *pool.Tx) error {
		out.Steps = out.Steps[:0]
		for i, step := range n.steps {
			args, err := resolveArgs(in, out.Steps, step.Args)
			if err != nil {
				return err
			}
			r, err := tx.Query(ctx, step.SQL, args...)
			if err != nil {
				return fmt.Errorf("statement %d: %w", i, err)
			}
			res := newSQLResult(r)
			if err := checkRows(i, step, res); err != nil {
				return err
			}
			out.Steps = append(out.Steps, res)
		}
		return nil
	})
	if err != nil {
		return nil, sqlError(err)
	}
	return out, nil
}

// sqlError marks err permanent unless running the statement again may
// succeed: a serialization failure or deadlock (class 40), a lost or
// refused connection (class 08, 57P01–57P03, a server connection that could
// not be opened unless the server refused the login), too many connections
// on the server (53300), no free server connection in time, or a cancelled
// context (which retries never see).
func sqlError(err error) error {
	var (
		pe *pgconn.PgError
		ce *pool.ConnectError
	)
	switch {
	case errors.As(err, &pe): // also what a server refusing a login said
		if strings.HasPrefix(pe.Code, "40") || strings.HasPrefix(pe.Code, "08") ||
			pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03" || pe.Code == "53300" {
			return err
		}
	case errors.As(err, &ce), errors.Is(err, pool.ErrConnLost), errors.Is(err, pool.ErrAcquireTimeout),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return Permanent(err)
}

func checkRows(i int, step SQLStep, res *SQLResult) error {
	if step.ExpectRows != nil && res.RowCount() != *step.ExpectRows {
		return fmt.Errorf("statement %d: %w: %d, want %d", i, ErrUnexpectedRows, res.RowCount(), *step.ExpectRows)
	}
	return nil
}

// resolveArgs turns argument references into values: inputs, and in a
// transaction "steps.N…" into the steps run so far.
func resolveArgs(in Inputs, steps []*SQLResult, refs []string) ([]any, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	env := argEnv{in: in, steps: steps}
	args := make([]any, len(refs))
	for i, ref := range refs {
		v, err := Lookup(env, ref)
		if err != nil {
			return nil, Permanent(fmt.Errorf("argument $%d: %w", i+1, err))
		}
		args[i] = sqlValue(v)
	}
	return args, nil
}

// argEnv resolves the first segment of an argument reference.
type argEnv struct {
	in    Inputs
	steps []*SQLResult
}

func (e argEnv) Lookup(key string) (any, bool) {
	if key == "steps" && e.steps != nil {
		return e.steps, true
	}
	return e.in.Get(key)
}

// sqlValue passes objects and lists, such as those decoded from JSON, as
// jsonDoc and jsonList, and everything else as it is.
func sqlValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return jsonDoc(x)
	case []any:
		return jsonList(x)
	case []map[string]any: // SQLResult.Rows
		l := make(jsonList, len(x))
		for i, m := range x {
			l[i] = m
		}
		return l
	}
	return v
}

// jsonList is a list argument. It is encoded for the parameter's type: as
// an array for an array parameter (when its elements fit), as JSON for
// json and jsonb, and as JSON text (TextValue) for anything else.
type jsonList []any

// TextValue returns the list as JSON text.
func (l jsonList) TextValue() (pgtype.Text, error) { return jsonText([]any(l)) }

// jsonDoc is an object argument: JSON for json and jsonb parameters, JSON
// text (TextValue) for anything else.
type jsonDoc map[string]any

// TextValue returns the object as JSON text.
func (d jsonDoc) TextValue() (pgtype.Text, error) { return jsonText(map[string]any(d)) }

func jsonText(v any) (pgtype.Text, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return pgtype.Text{}, err
	}
	return pgtype.Text{String: string(b), Valid: true}, nil
}
