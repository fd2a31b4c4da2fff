// Command baton is a reverse-proxy load balancer for releasing software with
// no downtime. One binary: serve, check, demo.
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"

	"github.com/baton-lb/baton/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `baton — a reverse-proxy load balancer for releases with no downtime

Usage:
  baton serve -c baton.yaml     run the proxy
  baton check -c baton.yaml     validate a config; exit 1 with every error
  baton demo [--fast] [--exit]  a webshop on demo servers and a release story:
                                a bad version rolled back, a good one released
  baton demo -c FILE            serve a config with demo backends on its loopback addresses
  baton ctl COMMAND ...         drive a running baton through its admin API
  baton rollout POOL --to V --upgrade CMD
                                release a version server by server, judged by baton
  baton cluster status          the batons sharing decisions through etcd (as ctl cluster)
  baton version                 print the version

Run "baton COMMAND -h" for a command's flags.
`

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(rest, stdout, stderr)
	case "check":
		return cmdCheck(rest, stdout, stderr)
	case "demo":
		return cmdDemo(rest, stdout, stderr)
	case "ctl":
		return cmdCtl(rest, stdout, stderr)
	case "rollout":
		return cmdRollout(rest, stdout, stderr)
	case "cluster":
		if len(rest) == 0 || rest[0] != "status" {
			fmt.Fprintln(stderr, "usage: baton cluster status [--admin URL] [--token-file FILE] [-o json]")
			return exitUsage
		}
		return cmdCtl(append([]string{"cluster"}, rest[1:]...), stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "baton", version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "baton: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// cmdFlags are the flags of serve, check and demo.
type cmdFlags struct {
	path      string // -c FILE
	stateFile string // --state-file FILE: overrides the config's state_file

	pidFile string // serve --pid-file: where the serving process's PID is kept
	// serve --state-recover: a corrupt state file is moved aside and baton
	// starts from the config alone.
	recoverState bool

	// baton demo only.
	fast      bool // --fast: the releases' pauses shortened (for CI)
	exit      bool // --exit: exit after the releases instead of serving on
	noRelease bool // --no-release: only serve
}

// parseFlags parses "-c FILE [--state-file FILE]" for a subcommand.
func parseFlags(name string, args []string, stderr io.Writer, required bool) (f cmdFlags, code int, ok bool) {
	fs := flag.NewFlagSet("baton "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.path, "c", "", "config file (YAML)")
	fs.StringVar(&f.path, "config", "", "config file (YAML)")
	if name != "check" {
		fs.StringVar(&f.stateFile, "state-file", "", "where runtime decisions are kept (overrides state_file; \"off\": memory only)")
	}
	if name == "serve" {
		fs.StringVar(&f.pidFile, "pid-file", "", "write the serving process's PID here (it changes with a hitless upgrade)")
		fs.BoolVar(&f.recoverState, "state-recover", false, "if the state file is corrupt, move it aside (NAME.corrupt-TIME) and start from the config alone: runtime decisions are lost")
	}
	if name == "demo" {
		fs.BoolVar(&f.fast, "fast", false, "shorten the releases' pauses (the judge decides in seconds)")
		fs.BoolVar(&f.exit, "exit", false, "exit after the releases and their summary instead of serving on")
		fs.BoolVar(&f.noRelease, "no-release", false, "only serve: no traffic, no releases")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return f, exitOK, false
		}
		return f, exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "baton %s: unexpected argument %q\n", name, fs.Arg(0))
		return f, exitUsage, false
	}
	if required && f.path == "" {
		fmt.Fprintf(stderr, "baton %s: -c FILE is required\n", name)
		return f, exitUsage, false
	}
	return f, exitOK, true
}

// applyStateFlag lets --state-file override the config's state_file.
func (f cmdFlags) applyStateFlag(cfg *config.Config) {
	switch f.stateFile {
	case "":
	case "off":
		cfg.StateFile = ""
	default:
		cfg.StateFile = f.stateFile
	}
}

func cmdServe(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseFlags("serve", args, stderr, true)
	if !ok {
		return code
	}
	path := f.path
	// The content's hash is taken before loading, so an edit made while
	// baton starts is noticed by the watcher and applied.
	data, _ := os.ReadFile(path)
	sum := sha256.Sum256(data)
	cfg, err := config.Load(path)
	if err != nil {
		printConfigErrors(stderr, err)
		return exitFail
	}
	f.applyStateFlag(cfg)
	ctx, stop := signalContext()
	defer stop()
	// Hitless upgrades: the sockets can be handed to a new baton process,
	// and one started that way takes them from its parent.
	upg, err := tableflip.New(tableflip.Options{PIDFile: f.pidFile, UpgradeTimeout: time.Minute})
	if err != nil {
		fmt.Fprintln(stderr, "baton: hitless upgrades are not available:", err)
		upg = nil
	} else {
		defer upg.Stop()
	}
	if err := serve(ctx, cfg, serveOptions{path: path, loaded: sum, logw: stderr, upg: upg, recoverState: f.recoverState}); err != nil {
		fmt.Fprintln(stderr, "baton:", err)
		return exitFail
	}
	return exitOK
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseFlags("check", args, stderr, true)
	if !ok {
		return code
	}
	path := f.path
	cfg, err := config.Load(path)
	if err != nil {
		printConfigErrors(stderr, err)
		return exitFail
	}
	backends := 0
	for _, p := range cfg.Pools {
		backends += len(p.Backends)
	}
	https := ""
	if cfg.TLS.Listen != "" {
		https = fmt.Sprintf(", HTTPS on %s with %d certificate(s)", cfg.TLS.Listen, len(cfg.TLS.Certificates))
	}
	fmt.Fprintf(stdout, "%s: ok (%d pool(s), %d backend(s), listening on %s%s)\n", path, len(cfg.Pools), backends, cfg.Listen, https)
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	return exitOK
}

func printConfigErrors(w io.Writer, err error) {
	errs := config.Errors(err)
	for _, e := range errs {
		fmt.Fprintln(w, e)
	}
	if len(errs) > 1 {
		fmt.Fprintf(w, "%d errors\n", len(errs))
	}
}

// signalContext ends on SIGTERM or SIGINT: baton then stops accepting,
// lets requests in flight finish and exits 0.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}
