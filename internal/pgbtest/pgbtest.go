// Package pgbtest runs a real PgBouncer for a test, so that tests can compare
// kproxy's PgBouncer-compatible admin console with the original.
//
// [Start] runs one pgbouncer per call and stops it when the test ends;
// [Columns] reads the column names of a SHOW command from its admin console.
// The PgBouncer is the one installed on the machine (scripts/deps installs
// Debian's); tests skip when there is none.
//
// # What it does not do
//
// It cannot stop pgbouncer when the test binary is killed (for example by
// -timeout): that pgbouncer keeps running until killed by hand. Only the user
// "postgres" can log in, to the proxied database and to the console.
package pgbtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// AdminUser is the user that may log in, and the only one allowed to use the
// admin console.
const AdminUser = "postgres"

// ConsoleDB is the name of PgBouncer's admin console database.
const ConsoleDB = "pgbouncer"

const (
	readyTimeout = 10 * time.Second // for pgbouncer to accept connections
	stopTimeout  = 5 * time.Second  // after SIGTERM, before SIGKILL
	startTries   = 3                // a free port may be taken before pgbouncer binds it
)

// Start runs pgbouncer in a temp dir listening on a free 127.0.0.1 port below
// 32768, with transaction pooling, auth_type trust and admin user "postgres",
// proxying database name db to backend host:port. It returns the host:port
// pgbouncer listens on, once it accepts connections, and stops pgbouncer and
// removes the dir when the test ends. It skips the test (t.Skip) when the
// pgbouncer binary is not installed. When running as root it runs pgbouncer
// as the "postgres" user (PgBouncer refuses to run as root).
//
// The backend need not be reachable: SHOW commands on the console work
// without it. The test fails, with pgbouncer's log, when pgbouncer does not
// accept connections within 10 s or exits before the test ends.
func Start(t testing.TB, backendAddr, db string) (addr string) {
	t.Helper()
	bin := binary()
	if bin == "" {
		t.Skip("pgbtest: pgbouncer is not installed")
	}
	host, port, err := net.SplitHostPort(backendAddr)
	if err != nil {
		t.Fatalf("pgbtest: backend address: %v", err)
	}
	if !plainName(db) {
		t.Fatalf("pgbtest: database name %q: only letters, digits and _ are supported", db)
	}

	dir, err := os.MkdirTemp("", "kproxy-pgbtest-")
	if err != nil {
		t.Fatalf("pgbtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cred, err := shareDir(dir)
	if err != nil {
		t.Fatalf("pgbtest: %v", err)
	}
	// trust still requires the user to be listed in auth_file.
	userlist := filepath.Join(dir, "userlist.txt")
	if err := os.WriteFile(userlist, []byte(fmt.Sprintf("%q \"\"\n", AdminUser)), 0o644); err != nil {
		t.Fatalf("pgbtest: %v", err)
	}

	for try := 1; ; try++ {
		listen, err := freePort()
		if err != nil {
			t.Fatalf("pgbtest: %v", err)
		}
		p := &process{dir: dir, log: filepath.Join(dir, "pgbouncer.log")}
		ini := filepath.Join(dir, "pgbouncer.ini")
		conf := config(listen, userlist, db, host, port)
		if err := os.WriteFile(ini, []byte(conf), 0o644); err != nil {
			t.Fatalf("pgbtest: %v", err)
		}
		if err := p.start(bin, ini, cred); err != nil {
			t.Fatalf("pgbtest: start pgbouncer: %v", err)
		}
		addr = net.JoinHostPort("127.0.0.1", listen)
		err = p.waitReady(t.Context(), addr)
		if err == nil {
			t.Cleanup(func() { p.stop(t) })
			return addr
		}
		p.kill()
		if !errors.Is(err, errExited) || try == startTries {
			t.Fatalf("pgbtest: pgbouncer on %s: %v\n%s", addr, err, p.readLog())
		}
	}
}

// Columns connects to the admin console at addr (database "pgbouncer", user
// "postgres") and returns the column names of `SHOW <what>`, in order. It
// fails the test when the console cannot be reached or rejects the command.
func Columns(t testing.TB, addr, what string) []string {
	t.Helper()
	if !plainName(what) {
		t.Fatalf("pgbtest: SHOW %q: not a plain name", what)
	}
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	conn, err := pgconn.Connect(ctx, consoleURL(addr))
	if err != nil {
		t.Fatalf("pgbtest: connect to console at %s: %v", addr, err)
	}
	defer conn.Close(context.Background())

	// The console speaks only the simple query protocol.
	mrr := conn.Exec(ctx, "SHOW "+what)
	var names []string
	if mrr.NextResult() {
		// Read from the reader, not its Result: Result.FieldDescriptions
		// stays empty when there are no rows.
		rr := mrr.ResultReader()
		for _, f := range rr.FieldDescriptions() {
			names = append(names, f.Name)
		}
		_, _ = rr.Close()
	}
	if err := mrr.Close(); err != nil {
		t.Fatalf("pgbtest: SHOW %s: %v", what, err)
	}
	return names
}

// errExited reports that pgbouncer exited before accepting connections.
var errExited = errors.New("pgbouncer exited")

// process is one run of pgbouncer.
type process struct {
	dir    string
	log    string // pgbouncer's stdout and stderr
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd.Wait's error, set before exited is closed
}

func (p *process) start(bin, ini string, cred *syscall.Credential) error {
	log, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor
	// Without -d pgbouncer stays in the foreground and logs to stderr.
	p.cmd = exec.Command(bin, ini)
	p.cmd.Dir = p.dir
	p.cmd.Stdout = log
	p.cmd.Stderr = log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := p.cmd.Start(); err != nil {
		return err
	}
	p.exited = make(chan struct{})
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	return nil
}

// waitReady polls the admin console until it answers, pgbouncer exits, or
// readyTimeout passes.
func (p *process) waitReady(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, time.Second)
		conn, err := pgconn.Connect(attempt, consoleURL(addr))
		cancelAttempt()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%w: %v", errExited, p.err)
		case <-ctx.Done():
			return fmt.Errorf("not accepting connections after %v: %w", readyTimeout, err)
		case <-tick.C:
		}
	}
}

// stop ends pgbouncer at the end of a test, failing the test if it had
// exited by itself.
func (p *process) stop(t testing.TB) {
	select {
	case <-p.exited:
		t.Errorf("pgbtest: pgbouncer exited during the test: %v\n%s", p.err, p.readLog())
		return
	default:
	}
	// SIGTERM is PgBouncer's immediate shutdown; SIGINT would wait for clients.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		t.Errorf("pgbtest: pgbouncer ignored SIGTERM for %v; killing it", stopTimeout)
		p.kill()
	}
}

// kill ends pgbouncer at once and waits for it.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *process) readLog() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// config returns the pgbouncer.ini for one run.
func config(listenPort, userlist, db, backendHost, backendPort string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[databases]\n")
	fmt.Fprintf(&b, "%s = host=%s port=%s dbname=%s\n", db, backendHost, backendPort, db)
	fmt.Fprintf(&b, "\n[pgbouncer]\n")
	fmt.Fprintf(&b, "listen_addr = 127.0.0.1\n")
	fmt.Fprintf(&b, "listen_port = %s\n", listenPort)
	fmt.Fprintf(&b, "unix_socket_dir =\n") // no socket in /tmp that other runs could clash on
	fmt.Fprintf(&b, "auth_type = trust\n")
	fmt.Fprintf(&b, "auth_file = %s\n", userlist)
	fmt.Fprintf(&b, "admin_users = %s\n", AdminUser)
	fmt.Fprintf(&b, "pool_mode = transaction\n")
	fmt.Fprintf(&b, "ignore_startup_parameters = extra_float_digits\n")
	return b.String()
}

// binary returns the path of pgbouncer, or "" when it is not installed.
// Debian installs it in /usr/sbin, which a non-root PATH may lack.
func binary() string {
	if path, err := exec.LookPath("pgbouncer"); err == nil {
		return path
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	return ""
}

// shareDir gives dir to the postgres OS user when running as root, and
// returns the credential pgbouncer must run with (nil: the current user).
func shareDir(dir string) (*syscall.Credential, error) {
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres OS user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return nil, err
	}
	// No supplementary groups: root's would otherwise stay.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// freePort returns a loopback port that was free a moment ago, below the
// ephemeral range (32768 and up on Linux), where outgoing connections in
// TIME_WAIT could keep pgbouncer from binding.
func freePort() (string, error) {
	for range 1000 {
		port := strconv.Itoa(10000 + rand.IntN(20000))
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			continue
		}
		ln.Close()
		return port, nil
	}
	return "", errors.New("no free port found")
}

func consoleURL(addr string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(AdminUser),
		Host:     addr,
		Path:     "/" + ConsoleDB,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// plainName reports whether s is a non-empty run of letters, digits and _,
// safe to put in pgbouncer.ini and in a SHOW command unquoted.
func plainName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}
