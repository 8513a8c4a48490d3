package proxy_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// python3 is Debian's, where scripts/deps installs psycopg 3.
const python3 = "/usr/bin/python3"

// TestPsycopgStatementsPreparedInARolledBackTransaction runs psycopg 3
// (prepare_threshold=2, autocommit, explicit transactions) through kproxy
// in transaction mode over two server connections: statements it prepared
// inside a transaction that an exception rolled back work in the next
// transaction, as on Postgres, where prepared statements survive a
// rollback. The same script runs directly on Postgres first.
func TestPsycopgStatementsPreparedInARolledBackTransaction(t *testing.T) {
	if out, err := exec.Command(python3, "-c", "import psycopg").CombinedOutput(); err != nil {
		t.Fatalf("psycopg 3 is missing (scripts/deps installs python3-psycopg): %v\n%s", err, out)
	}
	p := startProxy(t, transactionMode(2))
	for _, target := range []struct{ name, dsn, table string }{
		{"direct", directDSN("postgres", "postgres", ""), "psycopg_direct"},
		{"kproxy", p.DSN("postgres", "postgres", ""), "psycopg_kproxy"},
	} {
		t.Run(target.name, func(t *testing.T) {
			out, err := exec.Command(python3, "testdata/psycopg_rollback.py", target.dsn, target.table, "4").CombinedOutput()
			require.NoError(t, err, "%s", out)
			require.Equal(t, "440", strings.TrimSpace(string(out)), "statements run")
		})
	}
}
