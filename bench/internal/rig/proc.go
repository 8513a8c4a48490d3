package rig

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ClockTicks returns the kernel's clock ticks per second (getconf CLK_TCK),
// the unit of the CPU times in /proc/PID/stat; 100 when getconf fails.
func ClockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}

// CPUTicks returns the user plus system CPU time process pid has used, in
// clock ticks (see [ClockTicks]), from /proc/PID/stat.
func CPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime or stime", pid)
	}
	return utime + stime, nil
}

// Memory is a process's memory use from /proc/PID/status, in KiB.
type Memory struct {
	// RSSKiB is the resident set size now (VmRSS).
	RSSKiB int64
	// PeakRSSKiB is the largest RSSKiB over the process's life (VmHWM).
	PeakRSSKiB int64
}

// ReadMemory reads process pid's memory use.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	for line := range strings.SplitSeq(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "VmRSS":
			dst = &m.RSSKiB
		case "VmHWM":
			dst = &m.PeakRSSKiB
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("/proc/%d/status: %s: %w", pid, name, err)
		}
		*dst = n
	}
	if m.RSSKiB == 0 && m.PeakRSSKiB == 0 {
		return Memory{}, fmt.Errorf("/proc/%d/status: no VmRSS (a zombie?)", pid)
	}
	return m, nil
}

// SettledRSS reads process pid's VmRSS every 100 ms until two readings one
// second apart differ by less than 1%, or timeout passes, and returns the
// last reading in KiB. It gives a process that just did work time to return
// freed memory, so that a reading is not caught in the middle of a burst.
func SettledRSS(pid int, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	var prev []int64
	for {
		m, err := ReadMemory(pid)
		if err != nil {
			return 0, err
		}
		prev = append(prev, m.RSSKiB)
		if n := len(prev); n > 10 {
			old := prev[n-11]
			d := m.RSSKiB - old
			if d < 0 {
				d = -d
			}
			if d*100 < old {
				return m.RSSKiB, nil
			}
		}
		if time.Now().After(deadline) {
			return m.RSSKiB, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}
