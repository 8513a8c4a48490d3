// Command pgbench-matrix runs pgbench scenarios against Postgres directly,
// kproxy in transaction mode, kproxy in session mode and PgBouncer in
// transaction mode. It alternates the targets run by run over several
// rounds and writes the medians as a Markdown table and an SVG chart.
//
// Usage:
//
//	go run ./bench/cmd/pgbench-matrix          # quick mode, a few minutes
//	go run ./bench/cmd/pgbench-matrix -full    # every scenario, about 2 hours
//
// bench/README.md explains what it measures and how to read the results.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kproxy/kproxy/bench/internal/rig"
)

// database is the database pgbench fills and runs in; it is dropped and
// created again at the start of every invocation.
const database = "kproxy_bench"

// target is what pgbench connects to.
type target string

const (
	targetDirect        target = "direct"
	targetKproxyTx      target = "kproxy-tx"
	targetKproxySession target = "kproxy-session"
	// targetKproxyLoop is kproxy-tx with relay_engine: loop; it runs only
	// when -targets names it.
	targetKproxyLoop  target = "kproxy-loop"
	targetPgBouncerTx target = "pgbouncer-tx"
	// The floor targets are bench/cmd/floor-relay: transaction pooling
	// with nothing else, with a goroutine per client or one epoll loop.
	// They run only when -targets names them.
	targetFloorGoroutine target = "floor-goroutine"
	targetFloorEpoll     target = "floor-epoll"
)

// baselinePrefix starts the name of the target -baseline adds: kproxy in
// transaction mode, built from another commit.
const baselinePrefix = "kproxy-tx@"

// baseline reports whether t is kproxy built from the -baseline commit.
func (t target) baseline() bool { return strings.HasPrefix(string(t), baselinePrefix) }

// floor reports whether t is one of the floor-relay targets.
func (t target) floor() bool { return t == targetFloorGoroutine || t == targetFloorEpoll }

// defaultTargets run unless -targets says otherwise.
var defaultTargets = []target{targetDirect, targetKproxyTx, targetKproxySession, targetPgBouncerTx}

// allTargets are every target -targets accepts.
var allTargets = append(slices.Clone(defaultTargets), targetKproxyLoop, targetFloorGoroutine, targetFloorEpoll)

// scenario is one pgbench workload.
type scenario struct {
	Script   string // pgbench -b: select-only, tpcb-like, simple-update
	Protocol string // pgbench -M: simple, extended, prepared
	Clients  int    // pgbench -c
	Connect  bool   // pgbench -C: a new connection for every transaction
}

func (s scenario) String() string {
	str := fmt.Sprintf("%s %s c%d", s.Script, s.Protocol, s.Clients)
	if s.Connect {
		str += " -C"
	}
	return str
}

// cell is one scenario on one target, with a result per round.
type cell struct {
	Scenario scenario
	Target   target
	// Skip says why the cell is not run; "" when it is.
	Skip    string
	Results []result
}

// options are the command-line settings.
type options struct {
	full        bool
	seconds     int
	rounds      int
	scale       int
	poolSize    int
	primaryPort int
	out         string
	baseline    string // git revision of the kproxy-tx@ target; "" for none
	targets     []target
	scripts     []string
	protocols   []string
	clients     []int
	connect     []bool
}

func main() { rig.Main("pgbench-matrix", run) }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("pgbench-matrix", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o                                           options
		quick                                       bool
		targets, scripts, protocols, clients, conns string
	)
	fs.BoolVar(&quick, "quick", false, "quick mode (the default): select-only and tpcb-like, simple and prepared, 16 clients, 5 s runs, 3 rounds")
	fs.BoolVar(&o.full, "full", false, "full mode: 3 scripts × 3 protocols × 1, 16, 64, 256 clients × with and without -C")
	fs.IntVar(&o.seconds, "T", 5, "seconds per pgbench run")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; each runs every scenario once on every target")
	fs.StringVar(&targets, "targets", joinTargets(defaultTargets), "comma-separated targets to run; "+
		joinTargets([]target{targetFloorGoroutine, targetFloorEpoll})+" are bench/cmd/floor-relay")
	fs.StringVar(&o.baseline, "baseline", "", "git `rev`ision to build kproxy from as one more target, kproxy-tx@rev (transaction mode), next to kproxy-tx: an A/B in the same run")
	fs.StringVar(&o.out, "out", "bench/results", "results `dir`ectory; a relative path is taken from the repository root")
	fs.IntVar(&o.primaryPort, "primary", 0, "`port` of an existing primary on 127.0.0.1 that trusts user postgres; 0 starts a private cluster with scripts/pgcluster")
	fs.IntVar(&o.scale, "scale", 10, "pgbench scale factor for pgbench -i")
	fs.IntVar(&o.poolSize, "pool-size", 20, "server connections per pool: kproxy's max_connections and PgBouncer's default_pool_size (kproxy-session gets at least one per client)")
	fs.StringVar(&scripts, "scripts", "", "comma-separated pgbench -b scripts, replacing the mode's list")
	fs.StringVar(&protocols, "protocols", "", "comma-separated pgbench -M protocols, replacing the mode's list")
	fs.StringVar(&clients, "clients", "", "comma-separated client counts, replacing the mode's list")
	fs.StringVar(&conns, "connect", "", "off, on or both: run without pgbench -C, with it, or both, replacing the mode's choice")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./bench/cmd/pgbench-matrix [-full] [flags]\n\nSee bench/README.md.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if quick && o.full {
		return o, errors.New("-quick and -full exclude each other")
	}
	if o.seconds < 1 || o.rounds < 1 || o.scale < 1 || o.poolSize < 1 {
		return o, errors.New("-T, -rounds, -scale and -pool-size must be at least 1")
	}
	for _, name := range splitList(targets) {
		t := target(name)
		if !slices.Contains(allTargets, t) {
			return o, fmt.Errorf("unknown target %q (known: %s)", name, joinTargets(allTargets))
		}
		if !slices.Contains(o.targets, t) {
			o.targets = append(o.targets, t)
		}
	}
	if len(o.targets) == 0 {
		return o, errors.New("-targets is empty")
	}
	if o.baseline != "" {
		if strings.ContainsAny(o.baseline, " \t,") || strings.HasPrefix(o.baseline, "-") {
			return o, fmt.Errorf("bad -baseline revision %q", o.baseline)
		}
		t := target(baselinePrefix + o.baseline)
		i := slices.Index(o.targets, targetKproxyTx)
		o.targets = slices.Insert(o.targets, i+1, t) // at the end when kproxy-tx is not run
	}

	o.scripts = []string{"select-only", "tpcb-like"}
	o.protocols = []string{"simple", "prepared"}
	o.clients = []int{16}
	o.connect = []bool{false}
	if o.full {
		o.scripts = []string{"select-only", "tpcb-like", "simple-update"}
		o.protocols = []string{"simple", "extended", "prepared"}
		o.clients = []int{1, 16, 64, 256}
		o.connect = []bool{false, true}
	}
	if scripts != "" {
		o.scripts = splitList(scripts)
		for _, s := range o.scripts {
			if !slices.Contains([]string{"select-only", "tpcb-like", "simple-update"}, s) {
				return o, fmt.Errorf("unknown script %q", s)
			}
		}
	}
	if protocols != "" {
		o.protocols = splitList(protocols)
		for _, p := range o.protocols {
			if !slices.Contains([]string{"simple", "extended", "prepared"}, p) {
				return o, fmt.Errorf("unknown protocol %q", p)
			}
		}
	}
	if clients != "" {
		o.clients = nil
		for _, c := range splitList(clients) {
			n, err := strconv.Atoi(c)
			if err != nil || n < 1 {
				return o, fmt.Errorf("bad client count %q", c)
			}
			o.clients = append(o.clients, n)
		}
	}
	switch conns {
	case "":
	case "off":
		o.connect = []bool{false}
	case "on":
		o.connect = []bool{true}
	case "both":
		o.connect = []bool{false, true}
	default:
		return o, fmt.Errorf("-connect must be off, on or both, not %q", conns)
	}
	return o, nil
}

// harness holds what every run needs.
type harness struct {
	opts       options
	work       string // temporary directory, removed at the end
	pgbench    string
	pgbouncer  string // "" when not installed
	kproxy     string // built binary; "" when no kproxy target runs
	kproxyBase string // kproxy built from -baseline; "" without it
	floorRelay string // built floor-relay binary; "" when no floor target runs
	cluster    *rig.Cluster
	ticks      int64 // clock ticks per second
	threads    int   // pgbench -j upper bound: the number of CPUs
	logs       logEvents
	runDirs    int // runs so far, for naming their directories
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args[1:], stderr)
	if err != nil {
		return err
	}
	started := time.Now()
	loadStart := rig.LoadAverage()
	root, err := rig.RepoRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(opts.out) {
		opts.out = filepath.Join(root, opts.out)
	}
	// 256 clients through a proxy take over 512 descriptors; proxies
	// inherit the limit.
	if _, err := rig.RaiseOpenFiles(4096); err != nil {
		fmt.Fprintf(stderr, "pgbench-matrix: warning: %v\n", err)
	}

	h := &harness{opts: opts, ticks: rig.ClockTicks(), threads: runtime.NumCPU()}
	h.work, err = os.MkdirTemp("", "kproxy-bench-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(h.work)
	// PgBouncer runs as postgres in a directory below this one.
	if err := os.Chmod(h.work, 0o755); err != nil {
		return err
	}
	if h.pgbench, err = findPgbench(); err != nil {
		return err
	}
	h.pgbouncer = rig.PgBouncerBin()

	if slices.Contains(opts.targets, targetKproxyTx) || slices.Contains(opts.targets, targetKproxySession) || slices.Contains(opts.targets, targetKproxyLoop) {
		progress(stderr, "building kproxy")
		if h.kproxy, err = rig.BuildKproxy(ctx, root, h.work); err != nil {
			return err
		}
	}
	if opts.baseline != "" {
		progress(stderr, "building kproxy at "+opts.baseline)
		if h.kproxyBase, err = buildAt(ctx, root, opts.baseline, h.work); err != nil {
			return err
		}
	}
	if slices.ContainsFunc(opts.targets, target.floor) {
		progress(stderr, "building floor-relay")
		if h.floorRelay, err = rig.BuildFloorRelay(ctx, root, h.work); err != nil {
			return err
		}
	}
	if opts.primaryPort == 0 {
		progress(stderr, "starting a private cluster with scripts/pgcluster")
		h.cluster, err = rig.StartCluster(ctx, root)
		if err != nil {
			return err
		}
		defer func() {
			if err := h.cluster.Stop(); err != nil {
				fmt.Fprintf(stderr, "pgbench-matrix: %v\n", err)
			}
		}()
	} else {
		h.cluster = rig.UseCluster(opts.primaryPort)
	}
	progress(stderr, fmt.Sprintf("initialising %s on %s: pgbench -i -s %d", database, h.cluster.Addr(), opts.scale))
	if err := h.initDatabase(ctx); err != nil {
		return err
	}
	machine := rig.Describe(ctx, root, h.cluster.Addr(), h.pgbench, h.pgbouncer)

	cells := h.plan()
	total := 0
	for _, c := range cells {
		if c.Skip == "" {
			total += opts.rounds
		}
	}
	n := 0
	for round := 1; round <= opts.rounds; round++ {
		for i := 0; i < len(cells); i += len(opts.targets) {
			group := cells[i : i+len(opts.targets)]
			// Each round starts with a different target, so that none
			// always runs right after the same one.
			for k := range group {
				c := group[(k+round-1)%len(group)]
				if c.Skip != "" {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				n++
				res := h.runCell(ctx, c)
				c.Results = append(c.Results, res)
				fmt.Fprintf(stderr, "[%d/%d] %s %s round %d/%d: %s\n", n, total, c.Scenario, c.Target, round, opts.rounds, describe(res))
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	rep := report{
		opts:      opts,
		machine:   machine,
		cluster:   h.cluster,
		cells:     cells,
		logs:      h.logs.all(),
		command:   commandLine(args),
		started:   started,
		duration:  time.Since(started),
		loadStart: loadStart,
		loadEnd:   rig.LoadAverage(),
		threads:   h.threads,
		ticks:     h.ticks,
	}
	md := rep.markdown()
	svg := rep.svg()
	if err := os.MkdirAll(opts.out, 0o755); err != nil {
		return err
	}
	base := fmt.Sprintf("results-%s-%s", started.Format("2006-01-02-1504"), machine.Commit)
	for name, content := range map[string]string{
		base + ".md": md, base + ".svg": svg, "latest.md": md, "latest.svg": svg,
	} {
		if err := os.WriteFile(filepath.Join(opts.out, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprint(stdout, md)
	progress(stderr, fmt.Sprintf("wrote %s.md and %s.svg (and latest.*) in %s after %s",
		base, base, opts.out, time.Since(started).Round(time.Second)))
	return nil
}

// plan lists every cell: scenarios in order, and for each the targets in
// the order given. Cells that cannot run carry the reason in Skip.
func (h *harness) plan() []*cell {
	var cells []*cell
	o := h.opts
	for _, conn := range o.connect {
		for _, script := range o.scripts {
			for _, proto := range o.protocols {
				for _, clients := range o.clients {
					s := scenario{Script: script, Protocol: proto, Clients: clients, Connect: conn}
					for _, t := range o.targets {
						c := &cell{Scenario: s, Target: t}
						switch {
						case t == targetPgBouncerTx && h.pgbouncer == "":
							c.Skip = "pgbouncer is not installed"
						case t.floor() && proto == "prepared":
							c.Skip = "floor-relay does not track prepared statements, which -M prepared needs in transaction pooling"
						case t == targetPgBouncerTx && proto == "prepared" && !o.full:
							c.Skip = "PgBouncer 1.18 does not support protocol-level prepared statements in transaction mode " +
								"(pgbench fails with “prepared statement does not exist”); -full runs it to record the failures"
						}
						cells = append(cells, c)
					}
				}
			}
		}
	}
	return cells
}

// initDatabase creates the pgbench database afresh and fills it.
func (h *harness) initDatabase(ctx context.Context) error {
	err := rig.Exec(ctx, h.cluster.Addr(), "postgres",
		"DROP DATABASE IF EXISTS "+database+" WITH (FORCE)",
		"CREATE DATABASE "+database)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, h.pgbench, "-i", "-q", "-s", strconv.Itoa(h.opts.scale),
		"-h", "127.0.0.1", "-p", strconv.Itoa(h.cluster.PrimaryPort), "-U", rig.User, database)
	cmd.Env = rig.ClientEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w\n%s", err, out)
	}
	return nil
}

// runCell runs pgbench once for c. A proxy target gets a fresh proxy, so
// that its VmHWM is the peak of this run alone, with a warm pool.
func (h *harness) runCell(ctx context.Context, c *cell) result {
	h.runDirs++
	dir := filepath.Join(h.work, fmt.Sprintf("run-%d", h.runDirs))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return failedRun(err)
	}
	defer os.RemoveAll(dir)

	// What pgbench does before a run without -n, done on the primary so that
	// it costs no target anything: tpcb-like and simple-update runs fill
	// pgbench_history and leave dead rows in the small tables.
	err := rig.Exec(ctx, h.cluster.Addr(), database,
		"TRUNCATE pgbench_history", "VACUUM pgbench_branches", "VACUUM pgbench_tellers")
	if err != nil {
		return failedRun(fmt.Errorf("resetting tables: %w", err))
	}

	addr := h.cluster.Addr()
	var proxy *rig.Process
	pool := h.opts.poolSize
	switch {
	case c.Target == targetKproxyTx || c.Target == targetKproxySession || c.Target == targetKproxyLoop || c.Target.baseline():
		mode, bin := "transaction", h.kproxy
		var env []string
		if c.Target == targetKproxyLoop {
			env = []string{"KPROXY_RELAY_ENGINE=loop"}
		}
		if c.Target == targetKproxySession {
			// A session-mode client keeps its server connection: fewer
			// connections than clients would leave clients waiting.
			mode, pool = "session", max(pool, c.Scenario.Clients)
		}
		if c.Target.baseline() {
			bin = h.kproxyBase
		}
		proxy, err = rig.StartKproxy(ctx, rig.KproxyConfig{
			Bin: bin, Dir: dir, Primary: addr, PoolMode: mode, MaxConnections: pool, Database: database, Env: env,
		})
	case c.Target.floor():
		mode := strings.TrimPrefix(string(c.Target), "floor-")
		proxy, err = rig.StartFloorRelay(ctx, rig.FloorRelayConfig{
			Bin: h.floorRelay, Dir: dir, Primary: addr, Mode: mode, PoolSize: pool, Database: database,
		})
	case c.Target == targetPgBouncerTx:
		proxy, err = rig.StartPgBouncer(ctx, rig.PgBouncerConfig{
			Bin: h.pgbouncer, Dir: dir, Primary: addr, PoolMode: "transaction", PoolSize: pool,
			MaxClientConn: max(1000, 2*c.Scenario.Clients), Database: database,
		})
	}
	if err != nil {
		return failedRun(err)
	}
	var cpu0 int64
	if proxy != nil {
		defer func() {
			proxy.Stop()
			log, _ := os.ReadFile(proxy.LogPath)
			switch proxy.Name {
			case "kproxy":
				h.logs.addKproxy(c.Target, string(log))
			case "pgbouncer":
				h.logs.addPgBouncer(c.Target, string(log))
			default:
				h.logs.addLines(c.Target, string(log))
			}
		}()
		if err := rig.Warm(ctx, proxy.Addr, database, pool); err != nil {
			return failedRun(err)
		}
		if cpu0, err = rig.CPUTicks(proxy.PID()); err != nil {
			return failedRun(err)
		}
		addr = proxy.Addr
	}

	res := pgbenchRun{
		Bin: h.pgbench, Addr: addr, DB: database, LogDir: dir, Scenario: c.Scenario,
		Threads: min(h.threads, c.Scenario.Clients), Seconds: h.opts.seconds,
	}.run(ctx)

	if proxy != nil {
		if exited, werr := proxy.Exited(); exited {
			msg := fmt.Sprintf("%s exited during the run (%v): %s", proxy.Name, werr, firstLines(lastLines(proxy.LogTail(4000), 3), 3))
			res.Err = strings.TrimPrefix(res.Err+"; "+msg, "; ")
			return res
		}
		cpu1, err1 := rig.CPUTicks(proxy.PID())
		mem, err2 := rig.ReadMemory(proxy.PID())
		if err := errors.Join(err1, err2); err != nil {
			res.Err = strings.TrimPrefix(res.Err+"; reading /proc: "+err.Error(), "; ")
			return res
		}
		res.HasProxy = true
		res.CPUTicks = cpu1 - cpu0
		res.PeakRSSKiB = mem.PeakRSSKiB
	}
	return res
}

// buildAt builds kproxy as it was at git revision rev, from a copy of that
// tree (git archive) in a directory below work, and returns the binary.
func buildAt(ctx context.Context, root, rev, work string) (string, error) {
	src := filepath.Join(work, "baseline-src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.CommandContext(ctx, "git", "-C", root, "archive", "--format=tar", rev)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return "", err
	}
	untar.Stdin = pipe
	var archiveErr strings.Builder
	archive.Stderr = &archiveErr
	if err := untar.Start(); err != nil {
		return "", err
	}
	if err := archive.Run(); err != nil {
		_ = untar.Wait()
		return "", fmt.Errorf("git archive %s: %w: %s", rev, err, strings.TrimSpace(archiveErr.String()))
	}
	if err := untar.Wait(); err != nil {
		return "", fmt.Errorf("unpacking %s: %w", rev, err)
	}
	out := filepath.Join(work, "baseline-bin")
	if err := os.Mkdir(out, 0o755); err != nil {
		return "", err
	}
	return rig.BuildKproxy(ctx, src, out)
}

// describe is the end of a progress line for one run.
func describe(r result) string {
	s := "no tps"
	if r.HasTPS {
		s = formatInt(int64(r.TPS+0.5)) + " tps"
	}
	if r.Failed > 0 {
		s += fmt.Sprintf(", %s failed", formatInt(r.Failed))
	}
	if r.Err != "" {
		s += ": " + truncate(r.Err, 300)
	}
	return s
}

func progress(w io.Writer, msg string) {
	fmt.Fprintf(w, "pgbench-matrix: %s\n", msg)
}

// findPgbench returns pgbench from PATH, or from PostgreSQL 15's directory.
func findPgbench() (string, error) {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	const debian = "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(debian); err == nil {
		return debian, nil
	}
	return "", errors.New("pgbench not found in PATH or /usr/lib/postgresql/15/bin (run scripts/deps)")
}

// commandLine is the command as typed, with the temporary binary of
// `go run` shown as the go run command that made it.
func commandLine(args []string) string {
	parts := []string{args[0]}
	if strings.Contains(args[0], "go-build") {
		parts = []string{"go", "run", "./bench/cmd/pgbench-matrix"}
	}
	for _, a := range args[1:] {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func joinTargets(ts []target) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = string(t)
	}
	return strings.Join(s, ",")
}
