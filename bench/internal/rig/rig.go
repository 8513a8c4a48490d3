// Package rig sets up what the load tests in bench/ run against: a private
// Postgres cluster, kproxy and PgBouncer processes on free ports, and the
// readings of their CPU time and memory from /proc.
//
// # Lifecycle
//
// [StartCluster] and the Start functions return values whose Stop method
// ends what they started; Stop is safe to call more than once. A proxy runs
// as a child of the calling process, so it inherits the caller's limits
// (raise the open-files limit with [RaiseOpenFiles] first) and dies with
// nothing else: a harness that is killed leaves its proxies running.
//
// # Users
//
// Postgres and PgBouncer refuse to run as root. When the caller is root,
// PgBouncer runs as the OS user "postgres", in a directory that user owns,
// and the cluster is started by scripts/pgcluster, which does the same.
// Clients always log in as the database user "postgres" with trust
// authentication and without TLS.
//
// Nothing here is safe for concurrent use unless its doc comment says so.
package rig

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// User is the database user every client logs in as.
const User = "postgres"

// RepoRoot returns the directory of kproxy's go.mod, found by walking up
// from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/kproxy/kproxy\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the kproxy repository (no go.mod of github.com/kproxy/kproxy above the working directory)")
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listened on a moment
// ago. It stays below 32768, the start of Linux's ephemeral range, where an
// outgoing connection could take the port before the listener binds it.
// Another process may still take it first: callers retry on a bind failure.
func FreePort() (int, error) {
	for range 100 {
		p := 10000 + rand.IntN(32768-10000)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		return p, nil
	}
	return 0, errors.New("no free port found below 32768")
}

// RaiseOpenFiles raises this process's soft and hard limit on open files to
// at least n (capped at the kernel's fs.nr_open) and returns the new soft
// limit. Raising the hard limit needs CAP_SYS_RESOURCE (root, outside most
// containers); without it the soft limit goes up to the hard one, and the
// error says so. Children started afterwards inherit the limit.
func RaiseOpenFiles(n uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if max, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > max {
			n = max
		}
	}
	if lim.Cur >= n {
		return lim.Cur, nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not root: go as far as the hard limit allows.
		want = syscall.Rlimit{Cur: min(n, lim.Max), Max: lim.Max}
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err2 != nil {
			return lim.Cur, fmt.Errorf("raise open files to %d: %w", n, err)
		}
		return want.Cur, fmt.Errorf("open files limited to the hard limit %d, not %d: %w", lim.Max, n, err)
	}
	return want.Cur, nil
}

// cleanEnv returns the environment without the variables that would change
// where libpq tools or kproxy connect, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "KPROXY_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// ClientEnv is the environment for pgbench and other libpq clients: no
// PG* variable from the caller, and no TLS, because the proxies offer none
// and the direct target must not pay for it alone.
func ClientEnv() []string {
	return cleanEnv("PGSSLMODE=disable", "PGUSER="+User)
}
