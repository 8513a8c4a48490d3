package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kproxy/kproxy/internal/pgtest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kproxy-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "kproxy")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		panic(err)
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersionAndHelpWork(t *testing.T) {
	out, err := exec.Command(binary, "version").CombinedOutput()
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(out), "kproxy "), string(out))

	out, err = exec.Command(binary, "--help").CombinedOutput()
	require.NoError(t, err)
	for _, flag := range []string{"-listen", "-primary", "-replica", "-pool-mode", "-admin-listen", "-config"} {
		assert.Contains(t, string(out), flag)
	}
}

func TestInvalidConfigurationReportsEveryProblemAndExits2(t *testing.T) {
	file := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(file, []byte("listen: nowhere\npool:\n  max_conections: 3\n"), 0o600))
	cmd := exec.Command(binary, "serve", "--config", file, "--pool-mode", "statement")
	cmd.Env = append(os.Environ(), "KPROXY_NO_SUCH_SETTING=1")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	assert.Equal(t, 2, exitErr.ExitCode())
	for _, want := range []string{"KPROXY_NO_SUCH_SETTING", "listen", "pool.max_conections: unknown key", "pool_mode", "primary.host: required"} {
		assert.Contains(t, string(out), want)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

type poolStats struct {
	Pools []struct {
		Max int `json:"max_connections"`
	} `json:"pools"`
}

func TestServeRunsReloadsOnSIGHUPAndDrainsOnSIGTERM(t *testing.T) {
	listen, admin := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "kproxy.yaml")
	require.NoError(t, os.WriteFile(file, []byte("pool:\n  max_connections: 3\n"), 0o600))
	var logs bytes.Buffer
	cmd := exec.Command(binary, "serve", "--config", file, "--listen", listen, "--admin-listen", admin,
		"--primary", pgtest.Get().PrimaryAddr, "--replica", pgtest.Get().ReplicaAddr, "--pool-mode", "transaction")
	cmd.Env = append(os.Environ(), "KPROXY_BACKEND_TLS_SSLMODE=disable")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var conn *pgx.Conn
	require.Eventually(t, func() bool {
		var err error
		conn, err = pgx.Connect(ctx, "postgres://postgres@"+listen+"/postgres?sslmode=disable")
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "kproxy did not start: %s", &logs)
	var one int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&one))

	stats := func() poolStats {
		resp, err := http.Get("http://" + admin + "/stats")
		require.NoError(t, err)
		defer resp.Body.Close()
		var s poolStats
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
		return s
	}
	maxes := func() []int {
		var out []int
		for _, p := range stats().Pools {
			out = append(out, p.Max)
		}
		return out
	}
	// The primary's pool, and the replica's if SELECT 1 went there.
	require.NotEmpty(t, maxes())
	for _, m := range maxes() {
		assert.Equal(t, 3, m)
	}

	require.NoError(t, os.WriteFile(file, []byte("pool:\n  max_connections: 7\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		for _, m := range maxes() {
			if m != 7 {
				return false
			}
		}
		return true
	}, 5*time.Second, 20*time.Millisecond, "%s", &logs)

	// SIGTERM waits for the open transaction, then exits cleanly.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, tx.QueryRow(ctx, "SELECT 2").Scan(&one))
	require.NoError(t, tx.Commit(ctx))
	select {
	case err := <-exited:
		exited <- err
		require.NoError(t, err, "%s", &logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("kproxy did not exit after SIGTERM:\n%s", &logs)
	}
	assert.Contains(t, logs.String(), "configuration reloaded")
}
