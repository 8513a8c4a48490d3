package pgtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

// Roles that scripts/pgcluster creates.
const (
	Superuser     = "postgres"     // trusted, no password
	ScramUser     = "kproxy_scram" // SCRAM-SHA-256 secret and pg_hba method
	ScramPassword = "scram-pass"
	MD5User       = "kproxy_md5" // MD5 secret and pg_hba method
	MD5Password   = "md5-pass"
)

// Environment variables that point Run at an existing cluster.
const (
	EnvPrimary = "KPROXY_TEST_PRIMARY"
	EnvReplica = "KPROXY_TEST_REPLICA"
	EnvRedis   = "KPROXY_TEST_REDIS"
)

// startTimeout bounds scripts/pgcluster start and stop.
const startTimeout = 3 * time.Minute

// Cluster is a running test cluster. Its fields do not change while the
// tests run, and it is safe for concurrent use.
type Cluster struct {
	PrimaryAddr string // host:port of the primary
	ReplicaAddr string // host:port of the streaming replica
	RedisAddr   string // host:port of Redis

	dir string // cluster directory when Run started the cluster, else ""
}

// current is the cluster of this test binary, set by Run before any test
// runs and cleared after the last.
var current *Cluster

// Get returns the cluster that Run provides. It panics when called outside a
// test run of a package whose TestMain calls Run.
func Get() *Cluster {
	if current == nil {
		panic("pgtest: Get called without pgtest.Run in TestMain")
	}
	return current
}

// Run provides the cluster, runs the tests and returns the exit code for
// os.Exit. It uses the cluster named by KPROXY_TEST_PRIMARY,
// KPROXY_TEST_REPLICA and KPROXY_TEST_REDIS when all three are set, and
// otherwise starts one in a temporary directory, which it stops and removes
// after the tests, or on SIGINT or SIGTERM. It fails (returns 1 without
// running the tests) when the cluster cannot be started, and when tests that
// passed left goroutines running.
func Run(m *testing.M) int {
	c, err := open()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		return 1
	}
	// A cluster Run started must not outlive an interrupted test binary.
	done := make(chan struct{})
	watched := make(chan struct{})
	if c.dir == "" {
		close(watched)
	} else {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		go func() {
			defer close(watched)
			defer signal.Stop(sigs)
			select {
			case s := <-sigs:
				// Run waits on watched, which os.Exit leaves open,
				// so c.stop runs once.
				if err := c.stop(); err != nil {
					fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
				}
				fmt.Fprintf(os.Stderr, "pgtest: %v: cluster stopped\n", s)
				os.Exit(1)
			case <-done:
			}
		}()
	}

	current = c
	code := m.Run()
	current = nil

	close(done)
	<-watched
	if code == 0 {
		// Everything a passing test started must have stopped.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	if err := c.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// open returns the cluster from the environment or starts a new one.
func open() (*Cluster, error) {
	c := &Cluster{
		PrimaryAddr: os.Getenv(EnvPrimary),
		ReplicaAddr: os.Getenv(EnvReplica),
		RedisAddr:   os.Getenv(EnvRedis),
	}
	switch set := c.PrimaryAddr != "" || c.ReplicaAddr != "" || c.RedisAddr != ""; {
	case set && (c.PrimaryAddr == "" || c.ReplicaAddr == "" || c.RedisAddr == ""):
		return nil, fmt.Errorf("set all of %s, %s and %s, or none", EnvPrimary, EnvReplica, EnvRedis)
	case set:
		return c, nil
	}

	return start()
}

// start starts a new cluster in a temporary directory on free ports.
func start() (*Cluster, error) {
	c := &Cluster{}
	script, err := pgclusterPath()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kproxy-pgtest-")
	if err != nil {
		return nil, err
	}
	c.dir = dir
	if err := shareDir(dir); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := c.pgcluster(script, "start", dir, ports[0], ports[1], ports[2]); err != nil {
		_ = c.pgcluster(script, "stop", dir)
		_ = os.RemoveAll(dir)
		return nil, err
	}
	c.PrimaryAddr = net.JoinHostPort("127.0.0.1", ports[0])
	c.ReplicaAddr = net.JoinHostPort("127.0.0.1", ports[1])
	c.RedisAddr = net.JoinHostPort("127.0.0.1", ports[2])
	return c, nil
}

// stop stops and removes a cluster that open started.
func (c *Cluster) stop() error {
	if c.dir == "" {
		return nil
	}
	script, err := pgclusterPath()
	if err != nil {
		return err
	}
	if err := c.pgcluster(script, "stop", c.dir); err != nil {
		return err
	}
	return os.RemoveAll(c.dir)
}

// pgcluster runs scripts/pgcluster; its output is shown only when it fails.
func (c *Cluster) pgcluster(script string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, script, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/pgcluster %s: %w\n%s", args[0], err, out)
	}
	return nil
}

// pgclusterPath finds scripts/pgcluster in the module root above the
// working directory.
func pgclusterPath() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "scripts", "pgcluster"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// shareDir lets the postgres OS user, which runs the servers when the tests
// run as root, use dir.
func shareDir(dir string) error {
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs the postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]string, error) {
	// Ports below the ephemeral range (32768 and up on Linux): there,
	// outgoing connections in TIME_WAIT can keep a server from binding.
	ports := make([]string, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("pgtest: no free port found")
		}
		port := strconv.Itoa(10000 + rand.IntN(20000))
		if slices.Contains(ports, port) {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			continue
		}
		ln.Close()
		ports = append(ports, port)
	}
	return ports, nil
}

// StartPrivate starts a cluster of the test's own, for tests that break it
// (kill its replica, say), and stops it when the test ends. It takes a few
// seconds.
func StartPrivate(t testing.TB) *Cluster {
	t.Helper()
	c, err := start()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c
}

// KillReplica kills the replica's postmaster with SIGKILL, as a crash
// would. Only for a cluster from StartPrivate.
func (c *Cluster) KillReplica() error {
	if c.dir == "" {
		return errors.New("pgtest: KillReplica needs a cluster from StartPrivate")
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "replica", "postmaster.pid"))
	if err != nil {
		return err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return err
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// RestartReplica starts the replica again after KillReplica.
func (c *Cluster) RestartReplica() error {
	script, err := pgclusterPath()
	if err != nil {
		return err
	}
	// A killed postmaster leaves its pid file behind.
	if err := os.Remove(filepath.Join(c.dir, "replica", "postmaster.pid")); err != nil && !os.IsNotExist(err) {
		return err
	}
	var last error
	for range 20 { // its orphaned children take a moment to exit
		if last = c.pgcluster(script, "start", c.dir); last == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return last
}

// DSN returns a URL connection string for user to database db at addr, with
// sslmode=disable. It includes the password of ScramUser and MD5User.
func (c *Cluster) DSN(addr, db, user string) string {
	u := url.URL{Scheme: "postgres", Host: addr, Path: "/" + db, RawQuery: "sslmode=disable"}
	switch user {
	case ScramUser:
		u.User = url.UserPassword(user, ScramPassword)
	case MD5User:
		u.User = url.UserPassword(user, MD5Password)
	default:
		u.User = url.User(user)
	}
	return u.String()
}

// PrimaryConn connects to database postgres on the primary as the superuser.
// The connection is closed when the test ends.
func (c *Cluster) PrimaryConn(t testing.TB) *pgx.Conn {
	t.Helper()
	return connect(t, c.DSN(c.PrimaryAddr, "postgres", Superuser))
}

// ReplicaConn connects to database postgres on the replica as the superuser.
// The connection is closed when the test ends.
func (c *Cluster) ReplicaConn(t testing.TB) *pgx.Conn {
	t.Helper()
	return connect(t, c.DSN(c.ReplicaAddr, "postgres", Superuser))
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// WaitReplicaCaughtUp returns once the replica has replayed all WAL that the
// primary had written when it was called, so that everything committed before
// the call, asynchronously committed transactions included, is visible on the
// replica. Cancelling ctx makes it return ctx's error.
func (c *Cluster) WaitReplicaCaughtUp(ctx context.Context) error {
	primary, err := pgx.Connect(ctx, c.DSN(c.PrimaryAddr, "postgres", Superuser))
	if err != nil {
		return fmt.Errorf("pgtest: connect to primary: %w", err)
	}
	defer primary.Close(context.Background())
	// The cluster runs with synchronous_commit=off, so recent commits may
	// still sit in WAL buffers, not yet flushed nor sent to the replica: the
	// target is the insert position, which covers them. (A commit that wrote
	// no WAL of its own, such as SELECT txid_current(), does not flush them
	// even with synchronous_commit on.) The WAL writer flushes them within
	// three wal_writer_delay.
	var target string
	if err := primary.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&target); err != nil {
		return fmt.Errorf("pgtest: read primary WAL position: %w", err)
	}

	replica, err := pgx.Connect(ctx, c.DSN(c.ReplicaAddr, "postgres", Superuser))
	if err != nil {
		return fmt.Errorf("pgtest: connect to replica: %w", err)
	}
	defer replica.Close(context.Background())
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var replayed *bool
		err := replica.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target).Scan(&replayed)
		switch {
		case err != nil:
			return fmt.Errorf("pgtest: read replica WAL position: %w", err)
		case replayed == nil:
			return errors.New("pgtest: replica is not in recovery")
		case *replayed:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: replica has not replayed WAL up to %s: %w", target, ctx.Err())
		case <-tick.C:
		}
	}
}
