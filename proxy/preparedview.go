package proxy

import (
	"encoding/binary"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kproxy/kproxy/classify"
	"github.com/kproxy/kproxy/pool"
)

// The client's pg_prepared_statements. In transaction mode the server
// connection's statements are kproxy's, named by kproxy and shared by
// every client with the same text, so the view would show a client other
// clients' statements, under names it never chose, and keep showing its own
// after it deallocated them. Drivers and applications read the view to
// check whether a statement exists, or that it was deallocated.
//
// kproxy therefore rewrites a SELECT that reads the view in its FROM clause
// (classify finds where): the view is replaced by the rows Postgres would
// show the client, its own named statements with the names and texts it
// gave them, passed to json_populate_recordset with the view's own row
// type (so the columns are those of the server's version), followed by the
// server connection's SQL-level prepared statements (which pin a client to
// its connection, so are its own). kproxy does not count plans:
// generic_plans and custom_plans are 0. The function behind the view,
// pg_prepared_statement(), still lists the server connection's statements,
// for whoever wants to see kproxy's.
//
// The rows are in the text the server prepares, so a statement that reads
// the view is prepared again, under a new text, whenever the client's
// statements changed since its last Bind (refreshViewLocked).

// viewStmt is what a statement that reads pg_prepared_statements keeps of
// the client's Parse: its text (the key's search_path is the statement's
// path).
type viewStmt struct {
	text []byte
}

// preparedRow is a row of pg_prepared_statements, by column name.
type preparedRow struct {
	Name           string   `json:"name"`
	Statement      string   `json:"statement"`
	PrepareTime    string   `json:"prepare_time"`
	ParameterTypes []string `json:"parameter_types"`
	FromSQL        bool     `json:"from_sql"`
	GenericPlans   int64    `json:"generic_plans"`
	CustomPlans    int64    `json:"custom_plans"`
}

// preparedRowsLocked returns the client's named statements as a JSON array
// of preparedRow, ordered by name.
func (ss *session) preparedRowsLocked() string {
	rows := make([]preparedRow, 0, len(ss.stmts))
	for name, cs := range ss.stmts {
		types := cs.types
		if cs.shape != 0 && !cs.provisional {
			types = cs.fixed
		}
		rows = append(rows, preparedRow{
			Name:           name,
			Statement:      string(cs.clientText()),
			PrepareTime:    cs.at.Format(time.RFC3339Nano),
			ParameterTypes: oidStrings(types),
		})
	}
	slices.SortFunc(rows, func(a, b preparedRow) int { return strings.Compare(a.Name, b.Name) })
	b, _ := json.Marshal(rows) // strings and numbers only: it cannot fail
	return string(b)
}

// oidStrings returns the OIDs of raw parameter types (count, then OIDs) as
// decimal strings, which regtype's input takes.
func oidStrings(raw []byte) []string {
	out := []string{}
	if len(raw) < 2 {
		return out
	}
	n := int(binary.BigEndian.Uint16(raw))
	for i := range n {
		if len(raw) < 2+4*(i+1) {
			break
		}
		out = append(out, strconv.FormatUint(uint64(binary.BigEndian.Uint32(raw[2+4*i:])), 10))
	}
	return out
}

// rewritePreparedView returns text with each reference to
// pg_prepared_statements replaced by a subquery of the rows given as JSON.
func rewritePreparedView(text, rows string) string {
	tag := "$kp$"
	for i := 0; strings.Contains(rows, tag); i++ {
		tag = "$kp" + strconv.Itoa(i) + "$"
	}
	sub := "(SELECT * FROM pg_catalog.json_populate_recordset(NULL::pg_catalog.pg_prepared_statements, " +
		tag + rows + tag + ") UNION ALL SELECT * FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
	var b strings.Builder
	last := 0
	for _, r := range classify.PreparedStatementsRefs(text) {
		b.WriteString(text[last:r.Start])
		b.WriteString(sub)
		if !r.Aliased {
			b.WriteString(" AS pg_prepared_statements")
		}
		last = r.End
	}
	b.WriteString(text[last:])
	return b.String()
}

// readsPreparedViewLocked makes cs, whose text reads pg_prepared_statements,
// one that kproxy rewrites (see above), and rewrites it.
func (ss *session) readsPreparedViewLocked(cs *clientStmt) {
	cs.view = &viewStmt{text: cs.query}
	ss.refreshViewLocked(cs)
}

// refreshViewLocked rewrites cs, a statement that reads
// pg_prepared_statements, with the client's statements as they are now, and
// reports whether its text changed; a named one then has a new key, and is
// prepared again at its next use.
func (ss *session) refreshViewLocked(cs *clientStmt) bool {
	q := rewritePreparedView(string(cs.view.text), ss.preparedRowsLocked())
	if q == string(cs.query) {
		return false
	}
	cs.query = []byte(q)
	if cs.unnamed {
		return true
	}
	ss.reidentifyLocked(cs, func() { cs.key = pool.StmtKey(q, cs.types, cs.path) })
	cs.sc, cs.name = nil, ""
	return true
}
