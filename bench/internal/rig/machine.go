package rig

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes the computer and the software a benchmark ran with.
type Machine struct {
	CPUs      int    // online CPUs (nproc)
	CPUModel  string // "model name" from /proc/cpuinfo
	MemoryGiB float64
	Kernel    string
	Postgres  string // server_version of the primary
	Pgbench   string // first line of pgbench --version; "" when not asked for
	PgBouncer string // first line of pgbouncer --version; "" when not installed
	Go        string // go version
	Commit    string // short commit of HEAD, with "-dirty" when the tree has changes
}

// Describe gathers Machine for the repository at root, the primary at
// primary (host:port) and the pgbench and pgbouncer binaries given ("" to
// leave one out). A field it cannot read is "unknown".
func Describe(ctx context.Context, root, primary, pgbench, pgbouncer string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), CPUModel: "unknown", Kernel: "unknown"}
	if out, err := exec.Command("nproc").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			m.CPUs = n
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				m.MemoryGiB = kb / (1 << 20)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m.Postgres = orUnknown(QueryValue(ctx, primary, "postgres", "SHOW server_version"))
	if pgbench != "" {
		m.Pgbench = orUnknown(firstLine(exec.CommandContext(ctx, pgbench, "--version").Output()))
	}
	if pgbouncer != "" {
		m.PgBouncer = orUnknown(firstLine(exec.CommandContext(ctx, pgbouncer, "--version").Output()))
	}
	m.Go = orUnknown(firstLine(exec.CommandContext(ctx, "go", "version").Output()))
	m.Commit = Commit(ctx, root)
	return m
}

// Commit returns the short commit of HEAD in root, with "-dirty" when the
// working tree differs from it, or "unknown".
func Commit(ctx context.Context, root string) string {
	cmd := exec.CommandContext(ctx, "git", "rev-parse", "--short", "HEAD")
	cmd.Dir = root
	c, err := firstLine(cmd.Output())
	if err != nil {
		return "unknown"
	}
	cmd = exec.CommandContext(ctx, "git", "status", "--porcelain")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
		c += "-dirty"
	}
	return c
}

// LoadAverage returns the 1-minute load average from /proc/loadavg.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}

func firstLine(out []byte, err error) (string, error) {
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if line == "" {
		return "", fmt.Errorf("no output")
	}
	return line, nil
}

func orUnknown(s string, err error) string {
	if err != nil || s == "" {
		return "unknown"
	}
	return s
}
