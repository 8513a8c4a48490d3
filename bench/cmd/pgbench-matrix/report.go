package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kproxy/kproxy/bench/internal/rig"
)

// report turns the cells of a finished matrix into Markdown and SVG.
type report struct {
	opts      options
	machine   rig.Machine
	cluster   *rig.Cluster
	cells     []*cell
	logs      []*logEvent
	command   string
	started   time.Time
	duration  time.Duration
	loadStart string
	loadEnd   string
	threads   int
	ticks     int64
}

// summary is a cell's rounds folded into the figures of one table row.
type summary struct {
	Rounds  int // results, one per round run
	OK      int // results with a tps figure
	TPS     float64
	HasLat  bool
	P50     float64
	P99     float64
	P999    float64
	Failed  int64 // over all rounds
	Aborted int   // clients, over all rounds
	HasCPU  bool
	CPUus   float64 // median proxy CPU microseconds per transaction
	HasRSS  bool
	PeakMiB float64 // highest VmHWM of the rounds
	HasConn bool
	ConnMs  float64
	Errors  int // rounds with an error
}

// failing reports whether any round lost transactions or clients or ended
// with an error.
func (s summary) failing() bool { return s.Failed > 0 || s.Aborted > 0 || s.Errors > 0 }

func summarize(c *cell, ticksPerSecond int64) summary {
	s := summary{Rounds: len(c.Results)}
	var tps, p50, p99, p999, cpu, conn []float64
	for _, r := range c.Results {
		s.Failed += r.Failed
		s.Aborted += r.Aborted
		if r.Err != "" {
			s.Errors++
		}
		if r.HasTPS {
			s.OK++
			tps = append(tps, r.TPS)
			conn = append(conn, r.ConnMs)
		}
		if r.Latencies > 0 {
			p50 = append(p50, r.P50)
			p99 = append(p99, r.P99)
			p999 = append(p999, r.P999)
		}
		if r.HasProxy && r.Txns > 0 {
			cpu = append(cpu, float64(r.CPUTicks)*1e6/float64(ticksPerSecond)/float64(r.Txns))
		}
		if r.HasProxy {
			s.HasRSS = true
			s.PeakMiB = max(s.PeakMiB, float64(r.PeakRSSKiB)/1024)
		}
	}
	if len(tps) > 0 {
		s.TPS = median(tps)
		s.HasConn = true
		s.ConnMs = median(conn)
	}
	if len(p50) > 0 {
		s.HasLat = true
		s.P50, s.P99, s.P999 = median(p50), median(p99), median(p999)
	}
	if len(cpu) > 0 {
		s.HasCPU = true
		s.CPUus = median(cpu)
	}
	return s
}

func (r *report) markdown() string {
	var b strings.Builder
	m := r.machine
	mode := "quick"
	if r.opts.full {
		mode = "full"
	}
	fmt.Fprintf(&b, "# pgbench matrix: Postgres, kproxy and PgBouncer\n\n")
	fmt.Fprintf(&b, "Run on %s; it took %s. Command:\n\n", r.started.UTC().Format("2006-01-02 15:04 UTC"), r.duration.Round(time.Second))
	fmt.Fprintf(&b, "```sh\n%s\n```\n\n", r.command)
	fmt.Fprintf(&b, "- **Machine:** %d CPUs (nproc), %s, %.1f GiB of memory, Linux %s. Load average %s at the start, %s at the end.\n",
		m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, r.loadStart, r.loadEnd)
	pgb := m.PgBouncer
	if pgb == "" {
		pgb = "not installed"
	}
	fmt.Fprintf(&b, "- **Versions:** PostgreSQL %s; %s; %s; %s; kproxy %s.\n", m.Postgres, m.Pgbench, pgb, m.Go, m.Commit)
	if r.cluster.Private {
		fmt.Fprintf(&b, "- **Cluster:** private, started by scripts/pgcluster: a primary on %s (fsync off, max_connections 400) with a streaming replica that kproxy does not use.\n", r.cluster.Addr())
	} else {
		fmt.Fprintf(&b, "- **Cluster:** the existing primary on %s.\n", r.cluster.Addr())
	}
	fmt.Fprintf(&b, "- **Settings:** %s mode; rounds: %d, each of `pgbench -n -T %d -j min(%d, clients)`, scale %d. Pool size %d: kproxy's max_connections and PgBouncer's default_pool_size; kproxy-session gets one per client, at least %d. No TLS anywhere.\n",
		mode, r.opts.rounds, r.opts.seconds, r.threads, r.opts.scale, r.opts.poolSize, r.opts.poolSize)
	fmt.Fprintf(&b, "\nTPS is the median over the rounds; the ratios divide it by the median of the same scenario on Postgres directly and on PgBouncer. "+
		"Latencies are the medians of each run's exact percentiles over pgbench's per-transaction log; with -C they leave out connecting. "+
		"Failed counts failed transactions and aborted clients over all rounds. "+
		"CPU is the proxy's user+system time during the run divided by the transactions pgbench processed; peak RSS is the proxy's VmHWM, "+
		"the highest of the rounds, each round with a freshly started proxy. Conn is pgbench's initial connection time (with -C, its average connection time). "+
		"See bench/README.md.\n\n")

	byKey := map[string]summary{}
	key := func(s scenario, t target) string { return s.String() + "\x00" + string(t) }
	for _, c := range r.cells {
		if c.Skip == "" {
			byKey[key(c.Scenario, c.Target)] = summarize(c, r.ticks)
		}
	}
	baseline := func(s scenario, t target) (float64, bool) {
		// A baseline that lost clients or transactions is no baseline.
		sum, ok := byKey[key(s, t)]
		if !ok || sum.OK == 0 || sum.TPS <= 0 || sum.failing() {
			return 0, false
		}
		return sum.TPS, true
	}
	ratio := func(c *cell, sum summary, base target) string {
		if c.Target == base || sum.OK == 0 {
			return "—"
		}
		d, ok := baseline(c.Scenario, base)
		if !ok {
			return "—"
		}
		return fmt.Sprintf("%.2f×", sum.TPS/d)
	}

	b.WriteString("| scenario | target | TPS | vs direct | vs PgBouncer | p50 ms | p99 ms | p99.9 ms | failed | CPU µs/txn | peak RSS MiB | conn ms |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	var skipped []*cell
	var troubled []*cell
	for _, c := range r.cells {
		if c.Skip != "" {
			skipped = append(skipped, c)
			fmt.Fprintf(&b, "| %s | %s | n/a | | | | | | | | | |\n", c.Scenario, c.Target)
			continue
		}
		sum := byKey[key(c.Scenario, c.Target)]
		if sum.failing() {
			troubled = append(troubled, c)
		}
		tps := "fails"
		if sum.OK > 0 {
			tps = formatInt(int64(sum.TPS + 0.5))
			if sum.failing() {
				tps += " (fails)"
			}
		}
		lat := [3]string{"—", "—", "—"}
		if sum.HasLat {
			lat = [3]string{formatMs(sum.P50), formatMs(sum.P99), formatMs(sum.P999)}
		}
		failed := formatInt(sum.Failed)
		if sum.Aborted > 0 {
			failed += fmt.Sprintf(" + %d aborted clients", sum.Aborted)
		}
		if sum.Errors > 0 && sum.Aborted == 0 && sum.Failed == 0 {
			failed = fmt.Sprintf("%d of %d rounds", sum.Errors, sum.Rounds)
		}
		cpu, rss := "—", "—"
		if sum.HasCPU {
			cpu = fmt.Sprintf("%.1f", sum.CPUus)
		}
		if sum.HasRSS {
			rss = fmt.Sprintf("%.1f", sum.PeakMiB)
		}
		conn := "—"
		if sum.HasConn {
			conn = formatMs(sum.ConnMs)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			c.Scenario, c.Target, tps, ratio(c, sum, targetDirect), ratio(c, sum, targetPgBouncerTx),
			lat[0], lat[1], lat[2], failed, cpu, rss, conn)
	}

	if len(skipped) > 0 {
		b.WriteString("\n## Cells not run\n\n")
		seen := map[string]bool{}
		for _, c := range skipped {
			if !seen[c.Skip] {
				seen[c.Skip] = true
				fmt.Fprintf(&b, "- %s: %s\n", c.Target, c.Skip)
			}
		}
	}
	if len(troubled) > 0 {
		b.WriteString("\n## Failures\n\n")
		for _, c := range troubled {
			for i, res := range c.Results {
				if res.Err == "" && res.Failed == 0 {
					continue
				}
				msg := res.Err
				if msg == "" {
					msg = fmt.Sprintf("%d failed transactions", res.Failed)
				}
				fmt.Fprintf(&b, "- %s, %s, round %d: %s\n", c.Scenario, c.Target, i+1, mdEscape(msg))
			}
		}
	}
	b.WriteString("\n## What the proxies logged\n\n")
	if len(r.logs) == 0 {
		b.WriteString("Nothing beyond starting and stopping: no warning or error from kproxy or PgBouncer.\n")
	} else {
		b.WriteString("kproxy's lines other than starting and stopping, and PgBouncer's warnings and errors, grouped with numbers masked:\n\n")
		b.WriteString("| target | level | count | message (first example) |\n|---|---|--:|---|\n")
		logs := slices.Clone(r.logs)
		slices.SortStableFunc(logs, func(a, b *logEvent) int { return strings.Compare(string(a.Target), string(b.Target)) })
		for _, e := range logs {
			fmt.Fprintf(&b, "| %s | %s | %d | `%s` |\n", e.Target, e.Level, e.Count, strings.ReplaceAll(truncate(e.Example, 400), "`", "'"))
		}
	}
	return b.String()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// formatInt writes n with commas between thousands: 23950 is "23,950".
func formatInt(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatMs shows a duration in milliseconds with three significant digits
// or more.
func formatMs(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%.3f", ms)
	case ms < 10:
		return fmt.Sprintf("%.2f", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f", ms)
	default:
		return fmt.Sprintf("%.0f", ms)
	}
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "<", "&lt;", ">", "&gt;").Replace(s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
