package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/release"
)

// Exit code of baton rollout when interrupted (128 + SIGINT, as shells do).
const exitInterrupted = 130

const rolloutUsage = `baton rollout — release a version to a pool, server by server

Usage: baton rollout POOL --to VERSION --upgrade CMD [FLAGS]

The first server is drained (baton waits until nothing is in flight on it),
upgraded with CMD, and enabled as VERSION: it becomes the canary, and
baton's judge compares it with the stable version through the pool's steps.
On pass the canary is promoted and the other servers follow the same way,
at most --max-unavailable at a time. On fail it is rolled back: drained,
--rollback run on it, re-enabled on the old version; rollout exits 1 with
the judge's reason.

Interrupted (Ctrl-C, a lost session), the same command continues from what
baton shows. One rollout per pool runs at a time.

Commands run with sh -c after replacing {name}, {address}, {host}, {port},
{pool}, {version} (the version to install) and {from} (the version it
replaces). Name the admin API with --admin/--token-file as for baton ctl.

A release that changes a database the old version uses ships in steps
(v2 stops using a column, v3 drops it) with migration gates: --before runs
once before the first server is drained (expand), --after-gone once every
server runs VERSION and the old version is gone: no server of it in
rotation, nothing in flight on one, no affinity cookie of it that can
still be valid (contract). Gates get {pool}, {from} and {to}; baton records
each, so a gate that succeeded never runs twice, also when the rollout is
run again or baton restarted. --requires-gone V refuses to start (exit 2)
while V is still present in the pool.

Flags:
`

// cmdRollout is baton rollout: the command line of package release.
func cmdRollout(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton rollout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, rolloutUsage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nExit codes: 0 released, 1 rolled back or failed (the message says what to do),\n2 usage or a --requires-gone version still present, 3 the judge did not decide\nwithin --judge-wait or the old version was not gone within --gone-wait,\n130 interrupted.\n")
	}
	var o release.Options
	fs.StringVar(&o.To, "to", "", "the version to release (required)")
	fs.StringVar(&o.Upgrade, "upgrade", "", "command that installs --to on one server (required)")
	fs.StringVar(&o.Rollback, "rollback", "", "command that reinstalls the old version ({version}) on the canary after a failed release")
	fs.IntVar(&o.MaxUnavailable, "max-unavailable", 1, "servers out of rotation at once after the canary")
	fs.DurationVar(&o.DrainWait, "drain-wait", 5*time.Minute, "longest a drain may take")
	fs.DurationVar(&o.HealthWait, "health-wait", 2*time.Minute, "longest a server may take to pass its health check")
	fs.DurationVar(&o.JudgeWait, "judge-wait", 30*time.Minute, "longest to wait for the judge's decision on the canary")
	fs.DurationVar(&o.Poll, "poll", time.Second, "how often to look at the canary and the old version")
	fs.StringVar(&o.Before, "before", "", "migration gate run once before the first server is drained (expand): {pool}, {from}, {to}")
	fs.StringVar(&o.AfterGone, "after-gone", "", "migration gate run once every server runs --to and the old version is gone (contract): {pool}, {from}, {to}")
	fs.DurationVar(&o.GoneWait, "gone-wait", 2*time.Hour, "longest to wait for the old version to be gone before --after-gone")
	var badGone []string
	fs.Func("requires-gone", "refuse to start while this version is present in the pool (repeatable)", func(v string) error {
		if !config.ValidName(v) {
			badGone = append(badGone, v)
		}
		o.RequiresGone = append(o.RequiresGone, v)
		return nil
	})
	fs.BoolVar(&o.AllowUnknown, "allow-unknown", false, "let a --requires-gone version baton never saw in the pool count as gone")
	fs.BoolVar(&o.ReplaceUnfinished, "replace-unfinished", false, "replace the record of an earlier rollout whose --after-gone gate has not run (run that gate by hand)")
	fs.BoolVar(&o.ThisInstanceOnly, "this-instance-only", false, "in a cluster, judge a version gone by this baton's requests and cookies alone (check the others yourself)")
	dryRun := fs.Bool("dry-run", false, "print the plan and change nothing")
	output := fs.String("o", "text", "text, or json: one event per line")
	adminURL := fs.String("admin", "", "admin API URL (env BATON_ADMIN; default http://127.0.0.1:9090)")
	tokenFile := fs.String("token-file", "", "file with the API token (env BATON_TOKEN_FILE, or BATON_TOKEN)")

	var pos []string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	pos = append(pos, fs.Args()...)
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "baton rollout: "+format+"\n\n", a...)
		fs.Usage()
		return exitUsage
	}
	switch {
	case len(pos) != 1:
		return usageErr("give one pool, got %d arguments", len(pos))
	case o.To == "":
		return usageErr("--to VERSION is required")
	case o.Upgrade == "":
		return usageErr("--upgrade CMD is required")
	case o.MaxUnavailable < 1:
		return usageErr("--max-unavailable must be 1 or more, got %d", o.MaxUnavailable)
	case o.DrainWait <= 0 || o.HealthWait <= 0 || o.JudgeWait <= 0 || o.GoneWait <= 0 || o.Poll <= 0:
		return usageErr("--drain-wait, --health-wait, --judge-wait, --gone-wait and --poll must be positive")
	case len(badGone) > 0:
		return usageErr("--requires-gone must be a version (1-63 letters, digits, '.', '_' or '-'), got %q", badGone[0])
	case slices.Contains(o.RequiresGone, o.To):
		return usageErr("--requires-gone %s is the version to release", o.To)
	case strings.TrimSpace(o.Before) == "" && o.Before != "", strings.TrimSpace(o.AfterGone) == "" && o.AfterGone != "":
		return usageErr("--before and --after-gone need a command")
	case *output != "text" && *output != "json":
		return usageErr("-o must be text or json, got %q", *output)
	}
	pr := &rolloutPrinter{out: stdout, pool: pos[0], json: *output == "json"}
	pr.tty = !pr.json && isTerminal(stdout)
	base, co := withEnv(*adminURL, client.Options{TokenFile: *tokenFile})
	co.Timeout += o.DrainWait
	c, err := client.New(base, co)
	if err != nil {
		fmt.Fprintln(stderr, "baton rollout:", err)
		return exitUsage
	}
	host, _ := os.Hostname()
	o.Holder = fmt.Sprintf("baton rollout of %s to %s on %s (pid %d)", pr.pool, o.To, host, os.Getpid())
	o.Events, o.Describe = pr.event, describeAPI
	o.Run = release.Shell(nil) // -o json: the output's end goes into the failure's message
	if !pr.json {
		o.Run = release.Shell(&lockedWriter{mu: &pr.mu, w: stdout})
	}
	rel := release.New(c, pr.pool, o)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if *dryRun {
		plan, err := rel.Plan(ctx)
		if err == nil {
			printPlan(stdout, plan)
		}
		err = rolloutFailed(err)
	} else {
		err = rolloutFailed(rel.Run(ctx))
	}
	if err == nil {
		return exitOK
	}
	if ctx.Err() != nil {
		pr.say("interrupted", "interrupted; baton keeps every step taken so far: run the same command again to continue")
		return exitInterrupted
	}
	var ce *ctlError
	errors.As(err, &ce)
	pr.say("failed", ce.msg)
	if !pr.json {
		fmt.Fprintln(stderr, "baton rollout:", ce.msg)
	}
	return ce.code
}

// rolloutFailed maps the error a release ended with to baton rollout's
// message and exit code (nil stays nil).
func rolloutFailed(err error) error {
	if err == nil {
		return nil
	}
	// Servers upgraded together may fail together: the first failure is
	// the one reported.
	for {
		j, ok := err.(interface{ Unwrap() []error })
		if !ok {
			break
		}
		err = j.Unwrap()[0]
	}
	switch {
	case errors.Is(err, release.ErrUndecided), errors.Is(err, release.ErrNotGone):
		return fail(exitWait, "%s", err)
	case errors.Is(err, release.ErrRequiresGone):
		// Refused before anything was done, like a usage error: this
		// rollout may not start now.
		return fail(exitUsage, "%s", err)
	}
	return apiFailure(err)
}

// describeAPI words an admin API error inside a release's messages as
// baton ctl would print it.
func describeAPI(err error) string { return apiFailure(err).Error() }

// printPlan prints what a dry run would do.
func printPlan(w io.Writer, p release.Plan) {
	fmt.Fprintf(w, "plan: %s\n", p.Summary)
	for i, s := range p.Steps {
		fmt.Fprintf(w, "  %d. %s\n", i+1, s)
	}
	fmt.Fprintln(w, "nothing was changed (--dry-run)")
}

// rolloutPrinter prints a release's events: a line of text each, or one
// JSON object each with -o json. It is safe for concurrent use.
type rolloutPrinter struct {
	mu   sync.Mutex // serialises the events with the commands' output
	out  io.Writer
	pool string
	json bool
	tty  bool // text on a terminal: progress as a bar
}

// event prints one step.
func (p *rolloutPrinter) event(e release.Event) {
	msg := e.Message
	if e.Kind == "progress" && p.tty && e.Total > 0 {
		const width = 20
		n := e.Done * width / e.Total
		msg = "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "] " + msg
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		ev := map[string]string{"time": time.Now().UTC().Format(time.RFC3339Nano), "event": e.Kind, "pool": p.pool, "message": msg}
		if e.Backend != "" {
			ev["backend"] = e.Backend
		}
		if e.Version != "" {
			ev["version"] = e.Version
		}
		data, _ := json.Marshal(ev)
		fmt.Fprintf(p.out, "%s\n", data)
		return
	}
	fmt.Fprintf(p.out, "%s %s\n", time.Now().Format("15:04:05"), msg)
}

// say prints an event of baton rollout's own, about the whole run.
func (p *rolloutPrinter) say(kind, msg string) { p.event(release.Event{Kind: kind, Message: msg}) }

// lockedWriter serialises writes to w with the run's other output.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
