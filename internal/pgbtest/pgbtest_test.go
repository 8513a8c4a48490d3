package pgbtest_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgbtest"
)

// consoleCommands are the SHOW commands kproxy's admin console answers; a
// copy of the keys of proxy.consoleColumns, which this package must not import.
var consoleCommands = []string{"pools", "stats", "servers", "clients", "databases", "config", "lists", "version"}

func TestColumnsOfShowPoolsIncludeClientAndServerCounts(t *testing.T) {
	addr := pgbtest.Start(t, "127.0.0.1:1", "appdb")

	cols := pgbtest.Columns(t, addr, "pools")
	require.Contains(t, cols, "cl_active")
	require.Contains(t, cols, "sv_idle")
}

func TestColumnsOfEveryConsoleCommandAreReported(t *testing.T) {
	addr := pgbtest.Start(t, "127.0.0.1:1", "appdb")

	for _, what := range consoleCommands {
		t.Run(what, func(t *testing.T) {
			// SHOW SERVERS has no rows here: its columns must still come back.
			require.NotEmpty(t, pgbtest.Columns(t, addr, what))
		})
	}
}
