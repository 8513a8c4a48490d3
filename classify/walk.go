package classify

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// treeFacts are what a read needs from the whole of its parse tree, not
// only its top level: a FOR UPDATE in a subquery locks rows, and a
// standby refuses it as surely as one at the top.
type treeFacts struct {
	locking     bool // a locking clause in any SELECT
	into        bool // SELECT … INTO in any arm
	writableCTE bool // WITH x AS (INSERT/UPDATE/DELETE/MERGE …)
	subquery    bool // a sublink: IN (SELECT …), EXISTS, scalar subquery
}

func (f *treeFacts) walk(m protoreflect.Message) {
	switch n := m.Interface().(type) {
	case *pg_query.SelectStmt:
		f.locking = f.locking || len(n.GetLockingClause()) > 0
		f.into = f.into || n.GetIntoClause() != nil
	case *pg_query.CommonTableExpr:
		if q := n.GetCtequery(); q != nil && q.GetSelectStmt() == nil {
			f.writableCTE = true
		}
	case *pg_query.SubLink:
		f.subquery = true
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := range l.Len() {
				f.walk(l.Get(i).Message())
			}
			return true
		}
		f.walk(v.Message())
		return true
	})
}
