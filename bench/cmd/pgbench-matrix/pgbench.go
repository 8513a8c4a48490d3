package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kproxy/kproxy/bench/internal/rig"
)

// pgbenchRun says how to run pgbench once: the binary, the address and
// database to run against, the directory for its per-transaction log, the
// scenario, the number of threads (-j) and the duration in seconds (-T).
type pgbenchRun struct {
	Bin, Addr, DB, LogDir string
	Scenario              scenario
	Threads, Seconds      int
}

// result is what one pgbench run measured. Latencies are in milliseconds.
type result struct {
	HasTPS bool    // pgbench printed a tps line
	TPS    float64 // without initial connection time; with -C, including reconnections
	Txns   int64   // transactions actually processed
	Failed int64   // failed transactions, as pgbench counts them
	// Aborted counts clients that pgbench aborted after an error.
	Aborted int
	// ConnMs is pgbench's initial connection time, or with -C its average
	// connection time.
	ConnMs         float64
	P50, P99, P999 float64
	Latencies      int // logged transactions the percentiles are over
	// Err is the reason the run did not complete cleanly, "" when it did.
	Err string

	// Proxy readings; HasProxy is false for the direct target.
	HasProxy   bool
	CPUTicks   int64 // user+system ticks the proxy used during pgbench
	PeakRSSKiB int64 // VmHWM of the proxy, started fresh for this run
}

// failedRun is a result for a run that could not start.
func failedRun(err error) result { return result{Err: firstLines(err.Error(), 3)} }

var (
	reTxns    = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((without initial connection time|including reconnection times)\)`)
	reConn    = regexp.MustCompile(`(?m)^(?:initial|average) connection time = ([0-9.]+) ms`)
	reAborted = regexp.MustCompile(`client \d+ (?:script \d+ )?aborted`)
)

// killAfter is how long after its -T a pgbench run is killed. pgbench
// waits for the transactions in flight at the end, and a stuck client
// would make it wait for ever.
const killAfter = 30 * time.Second

// run runs pgbench and reads its output and per-transaction log. A run
// that does not end within killAfter of its duration is killed.
func (r pgbenchRun) run(ctx context.Context) result {
	s := r.Scenario
	host, port, _ := strings.Cut(r.Addr, ":")
	args := []string{"-n", "-b", s.Script, "-M", s.Protocol,
		"-c", strconv.Itoa(s.Clients), "-j", strconv.Itoa(r.Threads), "-T", strconv.Itoa(r.Seconds),
		"-l", "--log-prefix", filepath.Join(r.LogDir, "pgbench"),
		"-h", host, "-p", port, "-U", rig.User}
	if s.Connect {
		args = append(args, "-C")
	}
	args = append(args, r.DB)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(r.Seconds)*time.Second+killAfter)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.Bin, args...)
	cmd.Env = rig.ClientEnv()
	cmd.Dir = r.LogDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()

	res := parseSummary(stdout.String(), stderr.String())
	switch {
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		res.Err = fmt.Sprintf("pgbench did not finish within %s and was killed", time.Duration(r.Seconds)*time.Second+killAfter)
	case !res.HasTPS:
		out := stderr.String()
		if strings.TrimSpace(out) == "" {
			out = stdout.String()
		}
		res.Err = "pgbench printed no tps: " + firstLines(lastLines(out, 3), 3)
		if runErr != nil {
			res.Err += " (" + runErr.Error() + ")"
		}
	case res.Aborted > 0:
		res.Err = fmt.Sprintf("%d of %d clients aborted, first: %s", res.Aborted, s.Clients, firstAbort(stderr.String()))
	case runErr != nil:
		res.Err = fmt.Sprintf("pgbench: %v: %s", runErr, firstLines(lastLines(stderr.String(), 3), 3))
	}
	lat, bad, err := readLatencies(r.LogDir)
	if err != nil && res.Err == "" {
		res.Err = "reading pgbench's log: " + err.Error()
	}
	if bad > res.Failed {
		// The log marks failed transactions in place of a latency.
		res.Failed = bad
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		res.Latencies = len(lat)
		res.P50 = percentile(lat, 0.50)
		res.P99 = percentile(lat, 0.99)
		res.P999 = percentile(lat, 0.999)
	}
	return res
}

// parseSummary reads the figures pgbench prints at the end of a run.
func parseSummary(stdout, stderr string) result {
	var res result
	if m := reTPS.FindStringSubmatch(stdout); m != nil {
		res.TPS, _ = strconv.ParseFloat(m[1], 64)
		res.HasTPS = true
	}
	if m := reTxns.FindStringSubmatch(stdout); m != nil {
		res.Txns, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reFailed.FindStringSubmatch(stdout); m != nil {
		res.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reConn.FindStringSubmatch(stdout); m != nil {
		res.ConnMs, _ = strconv.ParseFloat(m[1], 64)
	}
	res.Aborted = len(reAborted.FindAllString(stderr, -1))
	return res
}

// readLatencies returns the latency of every transaction in the pgbench
// logs in dir, in milliseconds, and how many lines carry "failed" (or
// another word) instead of a latency. It removes the logs it read.
func readLatencies(dir string) (lat []float64, notNumbers int64, err error) {
	files, err := filepath.Glob(filepath.Join(dir, "pgbench.*"))
	if err != nil {
		return nil, 0, err
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// client_id transaction_no time script_no time_epoch time_us
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				notNumbers++
				continue
			}
			lat = append(lat, float64(us)/1000)
		}
		err = sc.Err()
		f.Close()
		os.Remove(name)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	return lat, notNumbers, nil
}

// percentile returns the nearest-rank p-quantile of sorted, which must not
// be empty: the smallest value that at least p of the values do not exceed.
func percentile(sorted []float64, p float64) float64 {
	// The epsilon keeps 1000*0.999 from rounding up to 1000.
	rank := int(math.Ceil(float64(len(sorted))*p - 1e-9))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

func firstAbort(stderr string) string {
	for line := range strings.SplitSeq(stderr, "\n") {
		if reAborted.MatchString(line) {
			return strings.TrimSpace(strings.TrimPrefix(line, "pgbench: error: "))
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, " / ")
}
