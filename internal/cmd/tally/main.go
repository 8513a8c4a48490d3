// Command tally reads the output of `go test -json` and reports how many
// tests (subtests included) passed, failed and were skipped. With -allowed it
// fails when a test failed that the list does not allow for -mode, and that
// did not fail in the -baseline run (the same suite run directly on
// Postgres) either.
//
//	tally -label NAME [-allowed FILE -mode MODE [-baseline FILE]] < go-test.json
//
// The allowed list has one entry per line: the package's last path element,
// the top-level test name, the modes it is allowed to fail in (a
// comma-separated subset of tx and session) and a reason; # starts a
// comment. A subtest is allowed when its top-level test is.
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
			fmt.Fprintln(os.Stderr, "tally:", err)
			os.Exit(2)
		}
		_, failed, _, err := count(f)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "tally:", err)
			os.Exit(2)
		}
		for _, t := range failed {
			direct[t] = true
		}
	}
	allowed := map[string]bool{}
	if *allowedFile != "" {
		var err error
		if allowed, err = readAllowed(*allowedFile, *mode); err != nil {
			fmt.Fprintln(os.Stderr, "tally:", err)
			os.Exit(2)
		}
	}
	counts, failed, pkgFailed, err := count(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(2)
	}
	fmt.Printf("%-24s passed %5d  failed %4d  skipped %4d\n", *label, counts["pass"], counts["fail"], counts["skip"])
	var bad []string
	for _, f := range failed {
		pkg, test, _ := strings.Cut(f, " ")
		top, _, _ := strings.Cut(test, "/")
		if !allowed[pkg+" "+top] && !direct[f] {
			bad = append(bad, f)
		}
	}
	for _, p := range pkgFailed {
		bad = append(bad, p+" (the package failed outside any test: a panic, a timeout or a build error)")
	}
	if *allowedFile == "" {
		return
	}
	for _, f := range failed {
		why := ""
		if direct[f] {
			why = " (fails on the direct run too)"
		}
		fmt.Printf("  failed: %s%s\n", f, why)
	}
	if len(bad) > 0 {
		fmt.Printf("%s: %d failures outside %s:\n", *label, len(bad), *allowedFile)
		for _, b := range bad {
			fmt.Println("  ", b)
		}
		os.Exit(1)
	}
}

// count reads go test -json events.
func count(r io.Reader) (counts map[string]int, failed, pkgFailed []string, err error) {
	counts = map[string]int{}
	anyTestFailed := map[string]bool{}
	var pkgs []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue // build output and the like
		}
		pkg := path.Base(e.Package)
		switch {
		case e.Test != "" && (e.Action == "pass" || e.Action == "fail" || e.Action == "skip"):
			counts[e.Action]++
			if e.Action == "fail" {
				failed = append(failed, pkg+" "+e.Test)
				anyTestFailed[pkg] = true
			}
		case e.Test == "" && e.Action == "fail":
			pkgs = append(pkgs, pkg)
		}
	}
	for _, p := range pkgs {
		if !anyTestFailed[p] {
			pkgFailed = append(pkgFailed, p)
		}
	}
	sort.Strings(failed)
	return counts, failed, pkgFailed, sc.Err()
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
