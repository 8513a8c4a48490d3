// Command tally reads the output of `go test -json` and reports how many
// tests (subtests included) passed, failed and were skipped. With -allowed it
// fails when a test failed that the list does not allow for -mode, and that
// did not fail in the -baseline run (the same suite run directly on
// Postgres) either; it prints the failing tests' own output.
//
//	tally -label NAME [-allowed FILE -mode MODE [-baseline FILE]] < go-test.json
//
// The allowed list has one entry per line: the package's last path element,
// the top-level test name, the modes it is allowed to fail in (a
// comma-separated subset of tx and session) and a reason; # starts a
// comment. A subtest is allowed when its top-level test is.
//
// A test that started and never ended counts as failed: its package died
// (a panic, an os.Exit such as log.Fatal's, or the timeout), and neither it
// nor the tests the package had not reached yet have a result. A run in
// which a package died cannot be compared with another, so without
// -allowed (a direct run) tally fails then too.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// maxOutput bounds the lines of a failed test's output that tally keeps.
const maxOutput = 12

// result is what count reads from a run. Tests are named "package Test",
// with the package's last path element.
type result struct {
	counts map[string]int // of pass and skip
	// failed are the failed tests, sorted, the unfinished ones included.
	failed []string
	// unfinished are the tests that started and never ended.
	unfinished []string
	// pkgFailed are the packages that failed without a failed test (a
	// build error, say).
	pkgFailed []string
	// output is a failed test's own output, without go test's === and
	// --- lines, at most maxOutput lines of it.
	output map[string][]string
	// panics is the first "panic:" line of each package that printed one.
	panics map[string]string
}

func main() {
	label := flag.String("label", "", "name of the run, for the report")
	allowedFile := flag.String("allowed", "", "file of tests allowed to fail")
	mode := flag.String("mode", "", "pool mode the run used (tx or session), for the allowed list")
	baseline := flag.String("baseline", "", "go test -json output of the direct run: tests that failed there are not counted")
	flag.Parse()
	direct := map[string]bool{}
	if *baseline != "" {
		f, err := os.Open(*baseline)
		if err != nil {
			fatal(err)
		}
		base, err := count(f)
		f.Close()
		if err != nil {
			fatal(err)
		}
		for _, t := range base.failed {
			direct[t] = true
		}
	}
	allowed := map[string]bool{}
	if *allowedFile != "" {
		var err error
		if allowed, err = readAllowed(*allowedFile, *mode); err != nil {
			fatal(err)
		}
	}
	r, err := count(os.Stdin)
	if err != nil {
		fatal(err)
	}
	unfinished := map[string]bool{}
	for _, u := range r.unfinished {
		unfinished[u] = true
	}
	fmt.Printf("%-24s passed %5d  failed %4d  skipped %4d\n", *label, r.counts["pass"], len(r.failed), r.counts["skip"])
	if *allowedFile == "" {
		// A direct run is reported, and compared with, unless a package
		// died in it.
		if len(r.unfinished) == 0 {
			return
		}
		fmt.Printf("%s: a package died (tests that started and never ended: %d); the runs through kproxy cannot be compared with this one\n",
			*label, len(r.unfinished))
		printPanics(r)
		for _, f := range r.failed {
			if len(r.output[f]) > 0 && (unfinished[f] || r.panicked(f)) {
				fmt.Println("  ", f)
				printOutput(r.output[f])
			}
		}
		os.Exit(1)
	}
	var bad []string
	for _, f := range r.failed {
		pkg, test, _ := strings.Cut(f, " ")
		top, _, _ := strings.Cut(test, "/")
		if !allowed[pkg+" "+top] && !direct[f] {
			bad = append(bad, f)
		}
		why := ""
		switch {
		case unfinished[f]:
			why = " (never ended: its package died)"
		case direct[f]:
			why = " (fails on the direct run too)"
		}
		fmt.Printf("  failed: %s%s\n", f, why)
	}
	if len(bad) == 0 && len(r.pkgFailed) == 0 {
		return
	}
	fmt.Printf("%s: %d failures outside %s:\n", *label, len(bad)+len(r.pkgFailed), *allowedFile)
	printPanics(r)
	for _, b := range bad {
		why := ""
		if unfinished[b] {
			why = " (never ended: its package died)"
		}
		fmt.Printf("   %s%s\n", b, why)
		printOutput(r.output[b])
	}
	for _, p := range r.pkgFailed {
		fmt.Printf("   %s (the package failed outside any test: a panic, a timeout or a build error)\n", p)
	}
	os.Exit(1)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "tally:", err)
	os.Exit(2)
}

// panicked reports whether test printed a panic.
func (r result) panicked(test string) bool {
	for _, l := range r.output[test] {
		if strings.HasPrefix(l, "panic: ") {
			return true
		}
	}
	return false
}

func printPanics(r result) {
	var pkgs []string
	for p := range r.panics {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		fmt.Printf("   %s: %s\n", p, r.panics[p])
	}
}

// printOutput prints a failed test's output, indented.
func printOutput(lines []string) {
	for _, l := range lines {
		fmt.Println("        " + l)
	}
}

// count reads go test -json events.
func count(in io.Reader) (result, error) {
	r := result{counts: map[string]int{}, output: map[string][]string{}, panics: map[string]string{}}
	anyTestFailed := map[string]bool{}
	running := map[string]bool{} // started, not ended
	inStack := map[string]bool{} // printing a goroutine dump, not kept
	var started []string
	var pkgs []string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue // build output and the like
		}
		pkg := path.Base(e.Package)
		name := pkg + " " + e.Test
		switch {
		case e.Action == "output":
			out := strings.TrimRight(e.Output, "\n")
			if _, ok := r.panics[pkg]; !ok && strings.HasPrefix(out, "panic: ") {
				r.panics[pkg] = out
			}
			if strings.HasPrefix(out, "goroutine ") {
				inStack[name] = true
			}
			if e.Test != "" && !inStack[name] && strings.TrimSpace(out) != "" && !goTestLine(out) && len(r.output[name]) < maxOutput {
				r.output[name] = append(r.output[name], out)
			}
		case e.Test != "" && e.Action == "run":
			if !running[name] {
				running[name] = true
				started = append(started, name)
			}
		case e.Test != "" && (e.Action == "pass" || e.Action == "fail" || e.Action == "skip"):
			delete(running, name)
			if e.Action == "fail" {
				r.failed = append(r.failed, name)
				anyTestFailed[pkg] = true
			} else {
				r.counts[e.Action]++
				delete(r.output, name)
			}
		case e.Test == "" && e.Action == "fail":
			pkgs = append(pkgs, pkg)
		}
	}
	for _, name := range started {
		if running[name] {
			delete(running, name)
			r.unfinished = append(r.unfinished, name)
			r.failed = append(r.failed, name)
			pkg, _, _ := strings.Cut(name, " ")
			anyTestFailed[pkg] = true
		}
	}
	for _, p := range pkgs {
		if !anyTestFailed[p] {
			r.pkgFailed = append(r.pkgFailed, p)
		}
	}
	sort.Strings(r.failed)
	sort.Strings(r.unfinished)
	return r, sc.Err()
}

// goTestLine reports whether a line of a test's output is go test's own
// (=== RUN, --- FAIL and the like) rather than the test's.
func goTestLine(l string) bool {
	t := strings.TrimLeft(l, " ")
	return strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ")
}

// readAllowed returns the "package Test" entries of file allowed in mode.
func readAllowed(file, mode string) (map[string]bool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 4 {
			return nil, fmt.Errorf("%s:%d: want: package test modes reason", file, i+1)
		}
		for _, md := range strings.Split(f[2], ",") {
			if md == mode {
				m[f[0]+" "+f[1]] = true
			}
		}
	}
	return m, nil
}
