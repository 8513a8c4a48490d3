package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kproxy/kproxy/config"
	"github.com/kproxy/kproxy/pool"
	"github.com/kproxy/kproxy/workflow"
)

const workflowUsage = `kproxy workflow: run a workflow in-process, on pools of its own (library
mode: no proxy is needed), and print {"run_id", "results", "trace"} as JSON.

Usage:
  kproxy workflow run NAME|FILE [flags]

NAME is a workflow under workflows: in the configuration; anything else is
read as a YAML file holding one workflow (the keys of one entry of
workflows:, with a name:). The database, breakers, rate limits and caches
come from the configuration, which is read as kproxy serve reads it.

Exit status: 0 when the run succeeded, 1 when it failed (the error is also
on stderr), 2 for bad usage, configuration, workflow or parameters.

Example:
  kproxy workflow run order_summary --config kproxy.yaml --param status=paid
  kproxy workflow run ./adhoc.yaml --primary 127.0.0.1:5432 --params-json '{"ids": [1, 2]}'

Flags:
`

// workflowCommand runs kproxy workflow's sub-commands.
func workflowCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return workflowRun(nil, stdout, stderr) // prints the usage
	}
	switch args[0] {
	case "run":
		return workflowRun(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		return workflowRun([]string{"--help"}, stdout, stderr)
	}
	fmt.Fprintf(stderr, "kproxy workflow: unknown command %q; want run\n", args[0])
	return 2
}

func workflowRun(args []string, stdout, stderr io.Writer) int {
	f := &serveFlags{fs: flag.NewFlagSet("kproxy workflow run", flag.ContinueOnError)}
	flags := f.fs
	flags.SetOutput(stderr)
	flags.StringVar(&f.file, "config", "", "YAML configuration `file` (database, workflows, workflow_resilience, workflow_cache)")
	flags.StringVar(&f.primary, "primary", "", "primary server `host:port`")
	flags.Func("replica", "replica server `host:port` (repeatable)", func(s string) error {
		f.replicas = append(f.replicas, s)
		return nil
	})
	var (
		pairs      []string
		paramsJSON string
	)
	flags.Func("param", "run parameter `name=value`, passed as a string (repeatable; wins over --params-json)", func(s string) error {
		if name, _, ok := strings.Cut(s, "="); !ok || name == "" {
			return errors.New("want name=value")
		}
		pairs = append(pairs, s)
		return nil
	})
	flags.StringVar(&paramsJSON, "params-json", "", "run parameters as a JSON `object`; numbers stay numbers")
	flags.Usage = func() {
		fmt.Fprint(stderr, workflowUsage)
		flags.PrintDefaults()
	}
	targets, err := parseInterspersed(flags, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(targets) != 1 {
		fmt.Fprintf(stderr, "kproxy workflow run: want one workflow NAME or FILE, got %d arguments\n", len(targets))
		flags.Usage()
		return 2
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: invalid configuration:\n%v\n", err)
		return 2
	}
	name, w, err := pickWorkflow(cfg, targets[0])
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", err)
		return 2
	}
	params, err := workflow.DecodeParams([]byte(paramsJSON))
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: --params-json: %v\n", err)
		return 2
	}
	for _, p := range pairs {
		k, v, _ := strings.Cut(p, "=")
		params[k] = v
	}
	log, err := newLogger(cfg.LogLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", err)
		return 2
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	one := *cfg
	one.Workflows = map[string]config.Workflow{name: w}
	hosted, err := workflow.NewHosted(&one, workflow.HostedOptions{
		DB: func(database, user string) (*pool.DB, error) {
			return pool.OpenDB(ctx, &one, log, database, user)
		},
		// The run's failure goes to stderr below; the log need not repeat it.
		Logger: log.Named("workflow").WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel)),
	})
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", err)
		return 2
	}
	defer hosted.Close()
	run, err := hosted.Run(ctx, name, params)
	if run == nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", err)
		if errors.Is(err, workflow.ErrMissingParam) {
			return 2
		}
		return 1
	}
	out, jerr := json.MarshalIndent(workflow.NewRunResult(run, err), "", "  ")
	if jerr != nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", jerr)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", out)
	if err != nil {
		fmt.Fprintf(stderr, "kproxy: %v\n", err)
		return 1
	}
	return 0
}

// parseInterspersed parses flags that may come before, between or after
// the positional arguments, and returns those.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// pickWorkflow returns the configured workflow target names, or the one in
// the file target.
func pickWorkflow(cfg *config.Config, target string) (string, config.Workflow, error) {
	if w, ok := cfg.Workflows[target]; ok {
		return target, w, nil
	}
	w, err := config.ReadWorkflow(target, cfg)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		known := "none are configured"
		if len(cfg.Workflows) > 0 {
			names := make([]string, 0, len(cfg.Workflows))
			for n := range cfg.Workflows {
				names = append(names, n)
			}
			slices.Sort(names)
			known = "configured: " + strings.Join(names, ", ")
		}
		return "", w, fmt.Errorf("%q is neither a configured workflow (%s) nor a file", target, known)
	case err != nil:
		var ve *config.ValidationError
		if errors.As(err, &ve) {
			return "", w, fmt.Errorf("invalid workflow file %s:\n%v", target, err)
		}
		return "", w, err
	}
	return w.Name, w, nil
}
