// Command kproxy is a PostgreSQL proxy: connection pooling in session and
// transaction mode, with statements classified by the Postgres parser, and
// a host for workflows that run on the same pools.
//
// Usage:
//
//	kproxy [serve] [flags]                      run the proxy (the default)
//	kproxy workflow run NAME|FILE [flags]       run one workflow in-process and print its result
//	kproxy version                              print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/proxy"
	"github.com/kproxy/kproxy/workflow"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Fprintf(stdout, "kproxy %s\n", version)
			return 0
		case "serve":
			args = args[1:]
		case "workflow":
			return workflowCommand(args[1:], stdout, stderr)
		case "help":
			args = []string{"--help"}
		}
	}
	return serve(args, stdout, stderr)
}

// serveFlags are the command-line settings; each overrides the file and the
// environment when given.
type serveFlags struct {
	fs       *flag.FlagSet
	file     string
	listen   string
	admin    string
	primary  string
	replicas []string
	mode     string
}

func newServeFlags(stderr io.Writer) *serveFlags {
	f := &serveFlags{fs: flag.NewFlagSet("kproxy serve", flag.ContinueOnError)}
	fs := f.fs
	fs.SetOutput(stderr)
	fs.StringVar(&f.file, "config", "", "YAML configuration `file` holding every setting")
	fs.StringVar(&f.listen, "listen", "", "client `address` (default 127.0.0.1:6432)")
	fs.StringVar(&f.admin, "admin-listen", "", "admin HTTP `address` for /stats and /healthz (default 127.0.0.1:9930)")
	fs.StringVar(&f.primary, "primary", "", "primary server `host:port`")
	fs.Func("replica", "replica server `host:port` (repeatable)", func(s string) error {
		f.replicas = append(f.replicas, s)
		return nil
	})
	fs.StringVar(&f.mode, "pool-mode", "", "pool `mode`: session or transaction (default transaction)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `kproxy: a PostgreSQL proxy with session and transaction pooling.

Usage:
  kproxy [serve] [flags]                 run the proxy (serve is the default)
  kproxy workflow run NAME|FILE [flags]  run one workflow in-process (see kproxy workflow --help)
  kproxy version                         print the version

Settings come from defaults, then the --config file, then KPROXY_*
environment variables (e.g. KPROXY_POOL_MAX_CONNECTIONS=50), then flags.

Example:
  kproxy serve --primary 127.0.0.1:5432 --replica 127.0.0.1:5433

Flags:
`)
		fs.PrintDefaults()
	}
	return f
}

// load reads the file and environment, applies the flags and validates.
func (f *serveFlags) load() (*config.Config, error) {
	cfg, readErr := config.Read(f.file, os.Environ())
	var ve *config.ValidationError
	if readErr != nil && !errors.As(readErr, &ve) {
		return nil, readErr
	}
	var bad []config.Problem
	if f.listen != "" {
		cfg.Listen = f.listen
	}
	if isSet(f.fs, "admin-listen") {
		cfg.AdminListen = f.admin
	}
	if f.primary != "" {
		b, err := config.ParseBackend(f.primary)
		if err != nil {
			bad = append(bad, config.Problem{Path: "--primary", Message: err.Error()})
		}
		cfg.Primary = b
	}
	if len(f.replicas) > 0 {
		cfg.Replicas = nil
		for _, r := range f.replicas {
			b, err := config.ParseBackend(r)
			if err != nil {
				bad = append(bad, config.Problem{Path: "--replica", Message: err.Error()})
				continue
			}
			cfg.Replicas = append(cfg.Replicas, b)
		}
	}
	if f.mode != "" {
		cfg.PoolMode = config.PoolMode(f.mode)
	}
	var flagErr error
	if len(bad) > 0 {
		flagErr = &config.ValidationError{Problems: bad}
	}
	if err := config.Join(readErr, flagErr, cfg.Validate()); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func serve(args []string, stdout, stderr io.Writer) int {
	f := newServeFlags(stderr)
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kproxy: unexpected argument %q\n", f.fs.Arg(0))
		f.fs.Usage()
		return 2
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: invalid configuration:\n%v\n", err)
		return 2
	}
	log, err := newLogger(cfg.LogLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", err)
		return 2
	}
	defer log.Sync()

	cluster := pool.NewCluster(cfg, log)
	defer cluster.Close()
	srv, err := proxy.New(cfg, cluster, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	// Hosted workflows run on the proxy's pools, routed by its classifier.
	hosted, err := workflow.NewHosted(cfg, workflow.HostedOptions{
		DB: func(database, user string) (*pool.DB, error) {
			return pool.NewDB(cluster, srv.Classifier(), database, user), nil
		},
		Logger: log.Named("workflow"),
	})
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: invalid workflows:\n%v\n", err)
		return 2
	}
	defer hosted.Close()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("cannot listen", zap.String("address", cfg.Listen), zap.Error(err))
		return 1
	}
	var admin *http.Server
	if cfg.AdminListen != "" {
		aln, err := net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			ln.Close()
			log.Error("cannot listen", zap.String("address", cfg.AdminListen), zap.Error(err))
			return 1
		}
		admin = &http.Server{Handler: adminHandler(srv, hosted), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = admin.Serve(aln) }()
	}
	log.Info("kproxy is ready",
		zap.String("version", version), zap.String("listen", cfg.Listen), zap.String("admin_listen", cfg.AdminListen),
		zap.String("primary", cfg.Primary.Addr()), zap.Int("replicas", len(cfg.Replicas)), zap.String("pool_mode", string(cfg.PoolMode)))

	r := &reloader{f: f, srv: srv, hosted: hosted, log: log, running: cfg}
	srv.SetReloader(r.reload)
	proxy.Version = "kproxy " + version
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for {
		select {
		case err := <-serveErr:
			if err != nil {
				log.Error("accept loop failed", zap.Error(err))
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				_ = r.reload()
				continue
			}
			log.Info("draining: waiting for open transactions", zap.Stringer("signal", sig), zap.Duration("timeout", cfg.ShutdownTimeout))
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			err := srv.Shutdown(ctx)
			cancel()
			if admin != nil {
				_ = admin.Close()
			}
			if err != nil {
				log.Warn("shutdown deadline passed; remaining clients were disconnected")
			}
			log.Info("stopped")
			return 0
		}
	}
}

// adminHandler serves the proxy's admin API with the hosted workflows'
// routes under /workflows.
func adminHandler(srv *proxy.Server, hosted *workflow.Hosted) http.Handler {
	mux := http.NewServeMux()
	wh := hosted.Handler()
	mux.Handle("/workflows", wh)
	mux.Handle("/workflows/", wh)
	mux.Handle("/", srv.AdminHandler())
	return mux
}

// reloader re-reads the configuration and applies it, on SIGHUP or the
// admin console's RELOAD, all or nothing.
type reloader struct {
	f      *serveFlags
	srv    *proxy.Server
	hosted *workflow.Hosted
	log    *zap.Logger

	mu      sync.Mutex
	running *config.Config // guarded by mu
}

func (r *reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg, err := r.f.load()
	if err != nil {
		r.log.Error("reload rejected; keeping the running configuration", zap.Error(err))
		return err
	}
	if err := r.hosted.Reload(cfg); err != nil {
		r.log.Error("reload rejected: workflows do not build; keeping the running configuration", zap.Error(err))
		return err
	}
	if err := r.srv.Reload(cfg); err != nil {
		if rerr := r.hosted.Reload(r.running); rerr != nil {
			r.log.Error("restoring the running workflows failed", zap.Error(rerr))
		}
		r.log.Error("reload failed; keeping the running configuration", zap.Error(err))
		return err
	}
	r.running = cfg
	r.log.Info("configuration reloaded")
	return nil
}

func newLogger(level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(w), lvl)
	return zap.New(core), nil
}
