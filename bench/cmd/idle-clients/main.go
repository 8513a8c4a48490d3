// Command idle-clients measures what an idle client costs a proxy. It opens
// N client connections through kproxy in transaction mode, each logs in and
// runs SELECT 1 and then sits idle, and reads kproxy's resident memory
// before and after. It does the same through PgBouncer for comparison and
// reports the memory per idle client and the time it took to open them all.
//
// Usage:
//
//	go run ./bench/cmd/idle-clients -n 10000
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
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kproxy/kproxy/bench/internal/rig"
)

// database is where the clients log in; every cluster has it.
const database = "postgres"

// options are the command-line settings.
type options struct {
	clients     int
	concurrency int
	poolSize    int
	primaryPort int
	settle      time.Duration
	targets     []string
	out         string
}

// measurement is what one proxy did with the idle clients.
type measurement struct {
	Target      string
	Opened      int            // clients that logged in and ran SELECT 1
	Failed      int            // clients that did not
	Errors      map[string]int // failure messages, with how many clients got each
	OpenTime    time.Duration  // from the first connect to the last SELECT 1
	Before      int64          // VmRSS in KiB, settled, before any client
	After       int64          // VmRSS in KiB, settled, with every client idle
	Peak        int64          // VmHWM in KiB at the end
	ServerConns int            // server connections to the database, with every client idle
	Recheck     int            // idle clients asked for SELECT 1 again after the reading
	RecheckOK   int            // of those, how many answered
	Err         string         // why the target could not be measured
	Log         []string       // the proxy's log lines other than starting and stopping
}

func main() { rig.Main("idle-clients", run) }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("idle-clients", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var targets string
	fs.IntVar(&o.clients, "n", 10000, "idle client connections to open through each proxy")
	fs.IntVar(&o.concurrency, "concurrency", 200, "connections being opened at once")
	fs.IntVar(&o.poolSize, "pool-size", 20, "server connections per pool: kproxy's max_connections and PgBouncer's default_pool_size")
	fs.IntVar(&o.primaryPort, "primary", 0, "`port` of an existing primary on 127.0.0.1 that trusts user postgres; 0 starts a private cluster with scripts/pgcluster")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "how long the clients sit idle before the memory reading")
	fs.StringVar(&targets, "targets", "kproxy,pgbouncer", "comma-separated proxies to measure: kproxy, pgbouncer")
	fs.StringVar(&o.out, "out", "bench/results", "results `dir`ectory; a relative path is taken from the repository root")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./bench/cmd/idle-clients [-n 10000] [flags]\n\nSee bench/README.md.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.clients < 1 || o.concurrency < 1 || o.poolSize < 1 {
		return o, errors.New("-n, -concurrency and -pool-size must be at least 1")
	}
	for t := range strings.SplitSeq(targets, ",") {
		t = strings.TrimSpace(t)
		if t != "kproxy" && t != "pgbouncer" {
			return o, fmt.Errorf("unknown target %q (known: kproxy, pgbouncer)", t)
		}
		if !slices.Contains(o.targets, t) {
			o.targets = append(o.targets, t)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args[1:], stderr)
	if err != nil {
		return err
	}
	started := time.Now()
	root, err := rig.RepoRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(opts.out) {
		opts.out = filepath.Join(root, opts.out)
	}
	// This process holds one descriptor per client and each proxy one per
	// client plus its server connections; the proxies inherit the limit.
	limit, err := rig.RaiseOpenFiles(uint64(2*opts.clients + 4096))
	if err != nil {
		fmt.Fprintf(stderr, "idle-clients: warning: %v\n", err)
	}
	// The proxy needs one per client plus its server connections and a few
	// of its own; so does this process.
	if limit < uint64(opts.clients+1024) {
		return fmt.Errorf("the open files limit is %d, too low for %d clients; run as root or raise ulimit -n", limit, opts.clients)
	}
	logf(stderr, "open files limit: %d", limit)

	work, err := os.MkdirTemp("", "kproxy-bench-idle-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := os.Chmod(work, 0o755); err != nil { // PgBouncer runs as postgres below it
		return err
	}

	var kproxyBin, pgbouncerBin string
	if slices.Contains(opts.targets, "kproxy") {
		logf(stderr, "building kproxy")
		if kproxyBin, err = rig.BuildKproxy(ctx, root, work); err != nil {
			return err
		}
	}
	if slices.Contains(opts.targets, "pgbouncer") {
		if pgbouncerBin = rig.PgBouncerBin(); pgbouncerBin == "" {
			return errors.New("pgbouncer is not installed (run scripts/deps, or -targets kproxy)")
		}
	}
	var cluster *rig.Cluster
	if opts.primaryPort == 0 {
		logf(stderr, "starting a private cluster with scripts/pgcluster")
		if cluster, err = rig.StartCluster(ctx, root); err != nil {
			return err
		}
		defer func() {
			if err := cluster.Stop(); err != nil {
				logf(stderr, "%v", err)
			}
		}()
	} else {
		cluster = rig.UseCluster(opts.primaryPort)
	}
	machine := rig.Describe(ctx, root, cluster.Addr(), "", pgbouncerBin)

	var results []*measurement
	for _, t := range opts.targets {
		dir := filepath.Join(work, "run-"+t)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		var p *rig.Process
		switch t {
		case "kproxy":
			p, err = rig.StartKproxy(ctx, rig.KproxyConfig{
				Bin: kproxyBin, Dir: dir, Primary: cluster.Addr(), PoolMode: "transaction",
				MaxConnections: opts.poolSize, Database: database,
			})
		case "pgbouncer":
			p, err = rig.StartPgBouncer(ctx, rig.PgBouncerConfig{
				Bin: pgbouncerBin, Dir: dir, Primary: cluster.Addr(), PoolMode: "transaction",
				PoolSize: opts.poolSize, MaxClientConn: opts.clients + 100, Database: database,
			})
		}
		if err != nil {
			results = append(results, &measurement{Target: t, Err: err.Error()})
			logf(stderr, "%s: %v", t, err)
			continue
		}
		m := measure(ctx, opts, cluster, p, stderr)
		m.Target = t
		results = append(results, m)
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	md := markdown(opts, machine, cluster, results, commandLine(args), started, time.Since(started))
	if err := os.MkdirAll(opts.out, 0o755); err != nil {
		return err
	}
	base := fmt.Sprintf("idle-%s-%s.md", started.Format("2006-01-02-1504"), machine.Commit)
	for _, name := range []string{base, "idle-latest.md"} {
		if err := os.WriteFile(filepath.Join(opts.out, name), []byte(md), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprint(stdout, md)
	logf(stderr, "wrote %s and idle-latest.md in %s after %s", base, opts.out, time.Since(started).Round(time.Second))
	return nil
}

// measure opens the clients through p, reads p's memory, checks that some
// idle clients still answer, closes the clients and stops p.
func measure(ctx context.Context, opts options, cluster *rig.Cluster, p *rig.Process, stderr io.Writer) *measurement {
	m := &measurement{Errors: map[string]int{}}
	defer func() {
		p.Stop()
		if log, err := os.ReadFile(p.LogPath); err == nil {
			m.Log = noteworthy(p.Name, string(log))
		}
	}()
	var err error
	if m.Before, err = rig.SettledRSS(p.PID(), 5*time.Second); err != nil {
		m.Err = err.Error()
		return m
	}
	logf(stderr, "%s: RSS %.1f MiB before; opening %d clients, %d at a time", p.Name, float64(m.Before)/1024, opts.clients, opts.concurrency)

	conns := make([]*pgconn.PgConn, opts.clients)
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		sem  = make(chan struct{}, opts.concurrency)
		done int
	)
	start := time.Now()
	for i := range conns {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			c, err := rig.Connect(cctx, p.Addr, database)
			if err == nil {
				if _, err = c.Exec(cctx, "SELECT 1").ReadAll(); err != nil {
					c.Close(context.Background())
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				m.Failed++
				m.Errors[errorKind(err)]++
				return
			}
			conns[i] = c
			m.Opened++
			if done++; done%(max(1, opts.clients/10)) == 0 {
				logf(stderr, "%s: %d clients open after %s", p.Name, done, time.Since(start).Round(time.Millisecond))
			}
		}()
	}
	wg.Wait()
	m.OpenTime = time.Since(start)
	logf(stderr, "%s: %d clients open, %d failed, in %s; idle for %s", p.Name, m.Opened, m.Failed, m.OpenTime.Round(time.Millisecond), opts.settle)

	select {
	case <-time.After(opts.settle):
	case <-ctx.Done():
	}
	if exited, werr := p.Exited(); exited {
		m.Err = fmt.Sprintf("%s exited with idle clients (%v): %s", p.Name, werr, p.LogTail(1000))
	} else {
		if m.After, err = rig.SettledRSS(p.PID(), 10*time.Second); err != nil {
			m.Err = err.Error()
		}
		if mem, err := rig.ReadMemory(p.PID()); err == nil {
			m.Peak = mem.PeakRSSKiB
		}
	}
	m.ServerConns = serverConns(ctx, cluster)

	// A handful of idle clients must still work.
	var open []*pgconn.PgConn
	for _, c := range conns {
		if c != nil {
			open = append(open, c)
		}
	}
	for i := 0; i < len(open) && m.Recheck < 100; i += max(1, len(open)/100) {
		m.Recheck++
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := open[i].Exec(cctx, "SELECT 1").ReadAll(); err == nil {
			m.RecheckOK++
		}
		cancel()
	}
	logf(stderr, "%s: RSS %.1f MiB after, %.1f KB per idle client; %d of %d idle clients answered again",
		p.Name, float64(m.After)/1024, m.perClientKB(), m.RecheckOK, m.Recheck)

	for _, c := range open {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c.Close(cctx)
		}()
	}
	wg.Wait()
	return m
}

// perClientKB is the growth of the proxy's RSS per open client, in KiB.
func (m *measurement) perClientKB() float64 {
	if m.Opened == 0 {
		return 0
	}
	return float64(m.After-m.Before) / float64(m.Opened)
}

// serverConns counts the server connections to database, besides the one
// asking; -1 when it cannot.
func serverConns(ctx context.Context, cluster *rig.Cluster) int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := rig.QueryValue(ctx, cluster.Addr(), database,
		"SELECT count(*) FROM pg_stat_activity WHERE datname = '"+database+"' AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
	if err != nil {
		return -1
	}
	var n int
	fmt.Sscan(v, &n)
	return n
}

// errorKind shortens a connection error so that alike ones group.
func errorKind(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Sprintf("%s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out after 1 minute"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s)-i < 120 {
		return s[i+2:]
	}
	return s
}

// noteworthy returns a proxy's log lines other than routine ones: for
// kproxy every line but starting and stopping, for PgBouncer its warnings
// and errors. At most 20 lines.
func noteworthy(name, log string) []string {
	var out []string
	for line := range strings.SplitSeq(log, "\n") {
		line = strings.TrimSpace(line)
		keep := false
		switch name {
		case "kproxy":
			keep = line != "" && !strings.Contains(line, `"msg":"kproxy is ready"`) &&
				!strings.Contains(line, `"msg":"draining: waiting for open transactions"`) &&
				!strings.Contains(line, `"msg":"stopped"`)
		default:
			keep = strings.Contains(line, " WARNING ") || strings.Contains(line, " ERROR ") || strings.Contains(line, " FATAL ")
		}
		if keep && len(out) < 20 {
			out = append(out, line)
		}
	}
	return out
}

func markdown(opts options, m rig.Machine, cluster *rig.Cluster, results []*measurement, command string, started time.Time, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Idle clients: memory per connection\n\n")
	fmt.Fprintf(&b, "Run on %s; it took %s. Command:\n\n```sh\n%s\n```\n\n", started.UTC().Format("2006-01-02 15:04 UTC"), took.Round(time.Second), command)
	pgb := m.PgBouncer
	if pgb == "" {
		pgb = "PgBouncer not installed"
	}
	fmt.Fprintf(&b, "- **Machine:** %d CPUs (nproc), %s, %.1f GiB of memory, Linux %s.\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel)
	fmt.Fprintf(&b, "- **Versions:** PostgreSQL %s; %s; %s; kproxy %s.\n", m.Postgres, pgb, m.Go, m.Commit)
	where := "the existing primary on " + cluster.Addr()
	if cluster.Private {
		where = "a private cluster from scripts/pgcluster, primary on " + cluster.Addr()
	}
	fmt.Fprintf(&b, "- **Settings:** %d clients per proxy, opened %d at a time, each logs in to database %s as user postgres (trust, no TLS) and runs SELECT 1; transaction mode, pool size %d; %s; idle for %s before the reading.\n\n",
		opts.clients, opts.concurrency, database, opts.poolSize, where, opts.settle)
	b.WriteString("RSS is VmRSS from /proc/PID/status, read every 100 ms until it holds steady (within 1% for a second). " +
		"Per idle client is (RSS with the clients idle − RSS before the first client) ÷ clients opened, in KB of 1024 bytes. " +
		"Open time runs from the first connect to the last SELECT 1. Server conns counts Postgres backends on the database while the clients sit idle. " +
		"See bench/README.md.\n\n")
	b.WriteString("| proxy | clients open | failed | open time | opens/s | RSS before MiB | RSS idle MiB | KB per idle client | peak RSS MiB | server conns | still answer |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range results {
		if r.Opened == 0 && r.Err != "" {
			fmt.Fprintf(&b, "| %s | — | — | — | — | — | — | — | — | — | — |\n", r.Target)
			continue
		}
		rate := float64(r.Opened) / r.OpenTime.Seconds()
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %d | %d of %d |\n",
			r.Target, r.Opened, r.Failed, r.OpenTime.Round(time.Millisecond), rate,
			float64(r.Before)/1024, float64(r.After)/1024, r.perClientKB(), float64(r.Peak)/1024,
			r.ServerConns, r.RecheckOK, r.Recheck)
	}
	for _, r := range results {
		if r.Err == "" && r.Failed == 0 && len(r.Log) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n## %s\n\n", r.Target)
		if r.Err != "" {
			fmt.Fprintf(&b, "Could not be measured: %s\n\n", strings.ReplaceAll(r.Err, "\n", " "))
		}
		if r.Failed > 0 {
			b.WriteString("Clients that failed, by error:\n\n")
			kinds := make([]string, 0, len(r.Errors))
			for k := range r.Errors {
				kinds = append(kinds, k)
			}
			sort.Slice(kinds, func(i, j int) bool { return r.Errors[kinds[i]] > r.Errors[kinds[j]] })
			for _, k := range kinds {
				fmt.Fprintf(&b, "- %d × %s\n", r.Errors[k], k)
			}
			b.WriteString("\n")
		}
		if len(r.Log) > 0 {
			b.WriteString("What it logged (first 20 noteworthy lines):\n\n```text\n")
			for _, l := range r.Log {
				b.WriteString(l + "\n")
			}
			b.WriteString("```\n")
		}
	}
	return b.String()
}

// commandLine is the command as typed, with the temporary binary of
// `go run` shown as the go run command that made it.
func commandLine(args []string) string {
	parts := []string{args[0]}
	if strings.Contains(args[0], "go-build") {
		parts = []string{"go", "run", "./bench/cmd/idle-clients"}
	}
	return strings.Join(append(parts, args[1:]...), " ")
}

func logf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "idle-clients: "+format+"\n", args...)
}
