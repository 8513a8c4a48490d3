package rig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	readyTimeout = 15 * time.Second // for a proxy to answer SELECT 1
	stopTimeout  = 10 * time.Second // after SIGTERM, before SIGKILL
	startTries   = 3                // a free port may be taken before the proxy binds it
)

// errExited reports that a proxy exited before it accepted connections.
var errExited = errors.New("exited before accepting connections")

// Process is one proxy started by [StartKproxy], [StartPgBouncer] or
// [StartFloorRelay]. Its methods are safe for concurrent use.
type Process struct {
	// Name is "kproxy", "pgbouncer" or "floor-relay".
	Name string
	// Addr is the host:port clients connect to.
	Addr string
	// LogPath is the file that holds the proxy's stdout and stderr.
	LogPath string

	cmd      *exec.Cmd
	exited   chan struct{} // closed once cmd has been waited for
	waitErr  error         // cmd.Wait's error; read only after exited is closed
	stopOnce sync.Once
}

// PID is the proxy's process id, for reading /proc.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the proxy has exited, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.exited:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to 10 s for the proxy to exit, then kills it.
// It is safe to call more than once.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// LogTail returns up to the last n bytes of the proxy's log.
func (p *Process) LogTail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// start runs cmd with its output in logPath and waits until a client can
// run SELECT 1 in database db through addr.
func start(ctx context.Context, name, addr, logPath, db string, cmd *exec.Cmd) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Addr: addr, LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx, db); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

func (p *Process) waitReady(ctx context.Context, db string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		err := Ping(attempt, p.Addr, db)
		cancelAttempt()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s on %s: %w (%v)\n%s", p.Name, p.Addr, errExited, p.waitErr, p.LogTail(2000))
		case <-ctx.Done():
			return fmt.Errorf("%s on %s: not ready after %s: %v\n%s", p.Name, p.Addr, readyTimeout, err, p.LogTail(2000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// BuildKproxy builds ./cmd/kproxy of the repository at root into dir and
// returns the binary's path.
func BuildKproxy(ctx context.Context, root, dir string) (string, error) {
	return build(ctx, root, dir, "kproxy", "./cmd/kproxy")
}

// BuildFloorRelay builds ./bench/cmd/floor-relay into dir and returns the
// binary's path.
func BuildFloorRelay(ctx context.Context, root, dir string) (string, error) {
	return build(ctx, root, dir, "floor-relay", "./bench/cmd/floor-relay")
}

func build(ctx context.Context, root, dir, name, pkg string) (string, error) {
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}

// KproxyConfig says how to run kproxy.
type KproxyConfig struct {
	// Bin is the kproxy binary. Required.
	Bin string
	// Dir holds the log file. Required.
	Dir string
	// Primary is the primary's host:port. Required.
	Primary string
	// PoolMode is "transaction" or "session". Required.
	PoolMode string
	// MaxConnections is pool.max_connections. Required.
	MaxConnections int
	// Database is where the readiness check runs SELECT 1. Required.
	Database string
	// Env holds extra KPROXY_* settings, as NAME=value.
	Env []string
}

// StartKproxy runs kproxy on a free port with its admin HTTP server off,
// trust authentication, no TLS towards Postgres and the default log level,
// and returns once it serves SELECT 1. Its log is Dir/kproxy.log.
func StartKproxy(ctx context.Context, c KproxyConfig) (*Process, error) {
	return startOnFreePort(ctx, "kproxy", filepath.Join(c.Dir, "kproxy.log"), c.Database,
		func(port int) (*exec.Cmd, error) {
			cmd := exec.Command(c.Bin, "serve", "--listen", localAddr(port), "--primary", c.Primary,
				"--pool-mode", c.PoolMode, "--admin-listen", "")
			cmd.Env = cleanEnv(append([]string{
				"KPROXY_POOL_MAX_CONNECTIONS=" + strconv.Itoa(c.MaxConnections),
				"KPROXY_BACKEND_TLS_SSLMODE=disable",
			}, c.Env...)...)
			cmd.Dir = c.Dir
			return cmd, nil
		})
}

// startOnFreePort starts the command command returns for a free port on
// 127.0.0.1, like start. A proxy that exits before it accepts connections
// (another process took the port first) is tried again on another port,
// up to startTries times.
func startOnFreePort(ctx context.Context, name, logPath, db string, command func(port int) (*exec.Cmd, error)) (*Process, error) {
	var err error
	for range startTries {
		var port int
		if port, err = FreePort(); err != nil {
			return nil, err
		}
		var cmd *exec.Cmd
		if cmd, err = command(port); err != nil {
			return nil, err
		}
		var p *Process
		p, err = start(ctx, name, localAddr(port), logPath, db, cmd)
		if err == nil || !errors.Is(err, errExited) {
			return p, err
		}
	}
	return nil, err
}

func localAddr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// FloorRelayConfig says how to run floor-relay.
type FloorRelayConfig struct {
	// Bin is the floor-relay binary. Required.
	Bin string
	// Dir holds the log file. Required.
	Dir string
	// Primary is the primary's host:port; it must trust user postgres.
	// Required.
	Primary string
	// Mode is "goroutine" or "epoll". Required.
	Mode string
	// PoolSize is the number of server connections. Required.
	PoolSize int
	// Database is the database of the server connections. Required.
	Database string
}

// StartFloorRelay runs floor-relay on a free port and returns once it
// serves SELECT 1. Its log is Dir/floor-relay.log.
func StartFloorRelay(ctx context.Context, c FloorRelayConfig) (*Process, error) {
	return startOnFreePort(ctx, "floor-relay", filepath.Join(c.Dir, "floor-relay.log"), c.Database,
		func(port int) (*exec.Cmd, error) {
			cmd := exec.Command(c.Bin, "-mode", c.Mode, "-listen", localAddr(port), "-backend", c.Primary,
				"-database", c.Database, "-pool", strconv.Itoa(c.PoolSize))
			cmd.Env = cleanEnv()
			cmd.Dir = c.Dir
			return cmd, nil
		})
}

// PgBouncerConfig says how to run PgBouncer.
type PgBouncerConfig struct {
	// Bin is the pgbouncer binary. Required.
	Bin string
	// Dir holds the ini file, the user list and the log. Required; when
	// running as root it is handed to the OS user "postgres".
	Dir string
	// Primary is the primary's host:port. Required.
	Primary string
	// PoolMode is "transaction" or "session". Required.
	PoolMode string
	// PoolSize is default_pool_size. Required.
	PoolSize int
	// MaxClientConn is max_client_conn. Required.
	MaxClientConn int
	// Database is where the readiness check runs SELECT 1. Required.
	Database string
}

// StartPgBouncer runs PgBouncer on a free port and returns once it serves
// SELECT 1. Every database name is proxied to the same name on Primary.
// Authentication is trust for the user "postgres", connection logging is
// off (kproxy does not log connections either) and listen_backlog is 4096,
// like the somaxconn that bounds kproxy's Go listener.
func StartPgBouncer(ctx context.Context, c PgBouncerConfig) (*Process, error) {
	host, port, err := splitHostPort(c.Primary)
	if err != nil {
		return nil, err
	}
	cred, err := handToPostgres(c.Dir)
	if err != nil {
		return nil, err
	}
	// trust still needs the user listed in auth_file.
	userlist := filepath.Join(c.Dir, "userlist.txt")
	if err := writeOwned(userlist, fmt.Sprintf("%q \"\"\n", User), cred); err != nil {
		return nil, err
	}
	return startOnFreePort(ctx, "pgbouncer", filepath.Join(c.Dir, "pgbouncer.log"), c.Database,
		func(lport int) (*exec.Cmd, error) {
			ini := filepath.Join(c.Dir, "pgbouncer.ini")
			conf := fmt.Sprintf(`[databases]
* = host=%s port=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
listen_backlog = 4096
auth_type = trust
auth_file = %s
admin_users = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = %d
max_db_connections = 0
server_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
pidfile = %s
`, host, port, lport, userlist, User, c.PoolMode, c.PoolSize, c.MaxClientConn,
				filepath.Join(c.Dir, "pgbouncer.pid"))
			if err := writeOwned(ini, conf, cred); err != nil {
				return nil, err
			}
			// Without -d pgbouncer stays in the foreground and logs to stderr.
			cmd := exec.Command(c.Bin, ini)
			cmd.Dir = c.Dir
			cmd.Env = cleanEnv("HOME=" + c.Dir)
			if cred != nil {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			}
			return cmd, nil
		})
}

// PgBouncerBin returns the path of pgbouncer, or "" when it is not installed.
func PgBouncerBin() string {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	return ""
}

// handToPostgres gives dir to the OS user "postgres" when running as root
// and returns the credential to run PgBouncer with; nil when not root.
func handToPostgres(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgbouncer refuses to run as root and there is no OS user postgres: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	// Every parent must be traversable; os.MkdirTemp makes dirs 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

func writeOwned(path, content string, cred *syscall.Credential) error {
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return err
	}
	if cred != nil {
		return os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	return nil
}
