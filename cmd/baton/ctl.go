package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
)

// Exit code of baton ctl when a --wait ran out (the action stays in force).
const exitWait = 3

// ctlArgs are a ctl command line: positional arguments and flags, which may
// come in any order (baton ctl drain shop web-1 --wait 60s).
type ctlArgs struct {
	pos   []string
	flags map[string]string
}

// valued lists the flags that take a value; the others are switches.
var valued = map[string]bool{"admin": true, "token-file": true, "o": true, "output": true, "wait": true,
	"version": true, "weight": true, "address": true, "limit": true, "max-error-rate-increase": true, "min-requests": true,
	"to": true, "watch": true, "max-error-rate": true, "ca": true, "slow": true, "sample": true, "since": true, "timeout": true}

var switches = map[string]bool{"check": true, "h": true, "help": true, "standby": true, "refused": true, "errors": true,
	"ignore-affinity": true, "this-instance-only": true, "allow-unknown": true}

func parseCtlArgs(args []string) (*ctlArgs, error) {
	a := &ctlArgs{flags: map[string]string{}}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.pos = append(a.pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			a.pos = append(a.pos, arg)
			continue
		}
		name := strings.TrimLeft(arg, "-")
		value, hasValue := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, value, hasValue = k, v, true
		}
		switch {
		case switches[name]:
			if hasValue {
				return nil, fmt.Errorf("flag --%s takes no value", name)
			}
			a.flags[name] = "true"
		case name == "watch" && !hasValue && (i+1 >= len(args) || !isDuration(args[i+1])):
			// backend --watch takes its interval or none; switch
			// --watch 60s its duration.
			a.flags[name] = "true"
		case valued[name]:
			if !hasValue {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("flag --%s needs a value", name)
				}
				i++
				value = args[i]
			}
			if name == "output" {
				name = "o"
			}
			a.flags[name] = value
		default:
			return nil, fmt.Errorf("unknown flag %s", arg)
		}
	}
	return a, nil
}

// isDuration reports whether s reads as a duration such as 5s.
func isDuration(s string) bool {
	_, err := time.ParseDuration(s)
	return err == nil
}

// ctlClient is baton ctl's view of the admin API: the typed client, and how
// answers are printed.
type ctlClient struct {
	api    *client.Client
	stdout io.Writer
	stderr io.Writer
	output string
	tmpl   *template.Template // -o template=…: applied to the JSON answer
}

// ctlError is a failure with the exit code it maps to; a refusal of the
// admin API wraps the API's *client.Error.
type ctlError struct {
	code int
	msg  string
	api  *client.Error
}

func (e *ctlError) Error() string { return e.msg }

func (e *ctlError) Unwrap() error {
	if e.api == nil {
		return nil
	}
	return e.api
}

func fail(code int, format string, args ...any) error {
	return &ctlError{code: code, msg: fmt.Sprintf(format, args...)}
}

func cmdCtl(args []string, stdout, stderr io.Writer) int {
	a, err := parseCtlArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "baton ctl: %v\n\n%s", err, ctlUsage())
		return exitUsage
	}
	if a.flags["h"] != "" || a.flags["help"] != "" || (len(a.pos) > 0 && a.pos[0] == "help") {
		fmt.Fprint(stdout, ctlUsage())
		return exitOK
	}
	if len(a.pos) == 0 {
		fmt.Fprint(stderr, ctlUsage())
		return exitUsage
	}
	c, err := newCtlClient(a, stdout, stderr)
	if err == nil {
		err = c.run(a)
	}
	if err != nil {
		var ce *ctlError
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "baton ctl:", ce.msg)
			if ce.code == exitUsage {
				fmt.Fprint(stderr, "\n"+ctlUsage())
			}
			return ce.code
		}
		fmt.Fprintln(stderr, "baton ctl:", err)
		return exitFail
	}
	return exitOK
}

// withEnv fills what the command line left out from the environment
// (BATON_ADMIN, BATON_TOKEN_FILE, BATON_TOKEN, BATON_ADMIN_CA) and the
// default address.
func withEnv(base string, o client.Options) (string, client.Options) {
	if base == "" {
		base = os.Getenv("BATON_ADMIN")
	}
	if base == "" {
		base = "http://127.0.0.1:9090"
	}
	if o.TokenFile == "" {
		o.TokenFile = os.Getenv("BATON_TOKEN_FILE")
	}
	if o.TokenFile == "" && o.Token == "" {
		o.Token = os.Getenv("BATON_TOKEN")
	}
	if o.CAFile == "" {
		o.CAFile = os.Getenv("BATON_ADMIN_CA")
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	return base, o
}

// newCtlClient is the client baton ctl's command line asks for: --admin,
// --token-file, --ca, --wait and -o, or the environment.
func newCtlClient(a *ctlArgs, stdout, stderr io.Writer) (*ctlClient, error) {
	base, o := withEnv(a.flags["admin"], client.Options{TokenFile: a.flags["token-file"], CAFile: a.flags["ca"]})
	if w := a.flags["wait"]; w != "" {
		d, err := time.ParseDuration(w)
		if err != nil || d <= 0 {
			return nil, fail(exitUsage, "--wait must be a duration such as 60s, got %q", w)
		}
		o.Timeout += d
	}
	c := &ctlClient{stdout: stdout, stderr: stderr, output: a.flags["o"]}
	switch {
	case c.output == "", c.output == "text":
		c.output = "text"
	case c.output == "json", c.output == "name":
	case strings.HasPrefix(c.output, "template="):
		t, err := template.New("o").Option("missingkey=error").Parse(strings.TrimPrefix(c.output, "template="))
		if err != nil {
			return nil, fail(exitUsage, "-o template: %v", err)
		}
		c.tmpl = t
		c.output = "json" // the template gets the JSON answer; nothing else is printed
	default:
		return nil, fail(exitUsage, "-o must be text, json, name or template=GO-TEMPLATE, got %q", c.output)
	}
	api, err := client.New(base, o)
	if err != nil {
		if strings.Contains(err.Error(), "CA file") {
			return nil, fail(exitUsage, "--ca: %v", err)
		}
		return nil, fail(exitUsage, "--admin must be a URL such as http://127.0.0.1:9090, got %q", base)
	}
	c.api = api
	return c, nil
}

// call sends a request and decodes a 2xx JSON answer into out. API errors
// become ctlErrors with the API's message (and a hint), wrapping the API's
// error so callers can branch on its code.
func (c *ctlClient) call(method, path string, query url.Values, body, out any) (int, error) {
	status, data, err := c.api.Do(context.Background(), method, path, query, body, nil)
	if err != nil {
		return status, apiFailure(err)
	}
	if c.tmpl != nil {
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return status, fail(exitFail, "the admin API's answer is not JSON: %v", err)
		}
		if err := c.tmpl.Execute(c.stdout, v); err != nil {
			return status, fail(exitFail, "-o template: %v", err)
		}
		fmt.Fprintln(c.stdout)
	} else if c.output == "json" {
		_, _ = c.stdout.Write(data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return status, fail(exitFail, "the admin API's answer is not what this baton ctl expects: %v", err)
		}
	}
	return status, nil
}

// apiFailure is an error of the admin client as baton ctl, rollout and
// demo report it: a *ctlError with the API's message, a hint where one
// helps, and the exit code; it wraps the API's *client.Error, if any, so
// callers can branch on its code.
func apiFailure(err error) error {
	var ae *client.Error
	switch {
	case errors.As(err, &ae):
		switch ae.Status {
		case 401:
			return &ctlError{code: exitFail, msg: ae.Message + " (set --token-file, BATON_TOKEN_FILE or BATON_TOKEN)", api: ae}
		case 504:
			return &ctlError{code: exitWait, msg: ae.Message + "; run the command again to keep waiting", api: ae}
		}
		return &ctlError{code: exitFail, msg: ae.Message, api: ae}
	case errors.Is(err, client.ErrUnreachable):
		return fail(exitFail, "%v (is baton running? set --admin or BATON_ADMIN)", err)
	}
	return fail(exitFail, "%v", err)
}

func intFlag(a *ctlArgs, name string) (*int, error) {
	v, ok := a.flags[name]
	if !ok {
		return nil, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return nil, fail(exitUsage, "--%s must be a whole number, got %q", name, v)
	}
	return &n, nil
}

// ctlCommand is one subcommand of baton ctl: what its help and its usage
// error say, and what runs it.
type ctlCommand struct {
	// names: the commands this row runs, shown together in the help
	// ("promote POOL | rollback POOL | …").
	names []string
	// args follow the name in the help and in a usage error ("usage:
	// baton ctl drain POOL NAME [--wait 60s]"); nargs is how many
	// positional arguments the command takes.
	args  string
	nargs int
	// more is how many positional arguments it may take beyond nargs.
	more int
	// doc says what it does, a line of the help each; forms, when set,
	// are the help's lines instead, one per form of the command.
	doc   string
	forms []ctlForm
	run   func(c *ctlClient, a *ctlArgs) error
}

// ctlForm is one way of calling a command, as the help shows it.
type ctlForm struct{ args, doc string }

// ctlCommands are baton ctl's subcommands, in the order of its help.
var ctlCommands = []ctlCommand{
	{names: []string{"pools"}, doc: "list pools with their backends", run: (*ctlClient).pools},
	{names: []string{"pool"}, args: "POOL", nargs: 1, doc: "one pool (-o name: its backend names)", run: (*ctlClient).pool},
	{names: []string{"backend"}, args: "POOL NAME [--watch [2s]]", nargs: 2, run: (*ctlClient).backend,
		doc: "one backend; --watch: with its request rate, errors,\np50 and p99 now and over 15 minutes beside the\naverage backend of its version and of the stable one"},
	{names: []string{"add"}, args: "POOL NAME --address HOST:PORT [--version V] [--weight W] [--standby]", nargs: 2,
		doc: "--standby: drained, health checked, for a switch", run: (*ctlClient).add},
	{names: []string{"set"}, args: "POOL NAME [--weight W] [--version V] [--address HOST:PORT]", nargs: 2, run: (*ctlClient).set},
	{names: []string{"remove"}, args: "POOL NAME [--wait 30s]", nargs: 2, doc: "drain, then remove", run: (*ctlClient).remove},
	{names: []string{"drain"}, args: "POOL NAME [--wait 60s]", nargs: 2, doc: "no new requests; --wait until idle", run: (*ctlClient).drain},
	{names: []string{"enable"}, args: "POOL NAME [--version V] [--weight W]", nargs: 2, run: (*ctlClient).enable},
	{names: []string{"eject"}, args: "POOL NAME", nargs: 2, doc: "out of rotation now", run: (*ctlClient).eject},
	{names: []string{"canary"}, args: "POOL [--version V --weight W | --check]", nargs: 1, run: (*ctlClient).canary, forms: []ctlForm{
		{"POOL", "stable vs canary comparison"},
		{"POOL --version V --weight W", "start a canary or shift its share (percent)"},
		{"POOL --check [--max-error-rate-increase 0.01] [--min-requests 50]",
			"exit 0 if the judge passes the canary, 1 if it\nfails it; before a verdict, compare error rates"},
	}},
	{names: []string{"promote", "rollback", "hold", "resume"}, args: "POOL", nargs: 1, run: (*ctlClient).canaryAction},
	{names: []string{"switch"}, args: "POOL --to V [--watch 60s] [--max-error-rate 0.05] [--wait 90s]", nargs: 1,
		doc: "blue/green: all traffic to the standby servers\nof V at once; guards switch back if they fire;\n--wait until the watch ends (exit 1 if switched back)",
		run: (*ctlClient).switchVersion},
	{names: []string{"tail"}, args: "POOL [NAME] [--errors | --slow 200ms] [--version V] [--sample 0.01] [--since 5m]", nargs: 1, more: 1,
		doc: "the pool's (or one backend's) requests as they end,\na line each, failures in red, until Ctrl-C;\n-o json: newline-delimited JSON records", run: (*ctlClient).tail},
	{names: []string{"versions"}, args: "POOL", nargs: 1,
		doc: "every version present: backends by state, in flight,\nopen connections, affinity cookies still valid",
		run: (*ctlClient).versions},
	{names: []string{"wait-gone"}, args: "POOL VERSION [--timeout 10m] [--ignore-affinity] [--this-instance-only] [--allow-unknown]", nargs: 2,
		doc: "wait until no backend in rotation runs VERSION, nothing\nis in flight or open on one, and no affinity cookie of\nit can still be valid; exit 3 naming what holds it,\n1 if baton never saw VERSION (--allow-unknown: wait anyway)",
		run: (*ctlClient).waitGone},
	{names: []string{"events"}, args: "[--limit N] [--refused]", doc: "the audit log, newest first (--refused: refused requests)", run: (*ctlClient).events},
	{names: []string{"cluster"}, args: "[reset-state]", more: 1, run: (*ctlClient).cluster, forms: []ctlForm{
		{"", "the batons sharing decisions through etcd: each\ninstance's heartbeat and applied revision, the judge leader"},
		{"reset-state", "overwrite a shared state in etcd that this baton\ncannot read with the state it serves by (audited)"},
	}},
	{names: []string{"upgrade"}, doc: "start the baton binary again (a new version at the\nsame path) and hand it the sockets; exit 0 once it serves",
		run: (*ctlClient).upgrade},
}

// ctlUsage is baton ctl's help, the commands' part from ctlCommands.
func ctlUsage() string {
	var b strings.Builder
	b.WriteString("baton ctl — the admin API's client for scripts\n\nUsage: baton ctl COMMAND [ARGS] [FLAGS]\n\n")
	for _, cmd := range ctlCommands {
		if len(cmd.forms) > 0 {
			for _, f := range cmd.forms {
				writeHelpLine(&b, usageLine(cmd.names[0], f.args), f.doc)
			}
			continue
		}
		uses := make([]string, len(cmd.names))
		for i, name := range cmd.names {
			uses[i] = usageLine(name, cmd.args)
		}
		writeHelpLine(&b, strings.Join(uses, " | "), cmd.doc)
	}
	b.WriteString(ctlFlagsHelp)
	return b.String()
}

// usageLine is a command with its arguments: "drain POOL NAME [--wait 60s]".
func usageLine(name, args string) string { return strings.TrimSpace(name + " " + args) }

// writeHelpLine writes a command's line of the help: its usage, then what
// it does in a column, below when the usage is too wide for it.
func writeHelpLine(b *strings.Builder, use, doc string) {
	const indent, column = "  ", 36
	lines := strings.Split(doc, "\n")
	if doc == "" {
		lines = nil
	}
	if len(lines) > 0 && len(use) <= column-2 {
		fmt.Fprintf(b, "%s%-*s%s\n", indent, column, use, lines[0])
		lines = lines[1:]
	} else {
		fmt.Fprintf(b, "%s%s\n", indent, use)
	}
	for _, l := range lines {
		fmt.Fprintf(b, "%s%s%s\n", indent, strings.Repeat(" ", column), l)
	}
}

const ctlFlagsHelp = `
Flags:
  --admin URL        admin API (env BATON_ADMIN; default http://127.0.0.1:9090)
  --token-file FILE  file with the API token (env BATON_TOKEN_FILE, or BATON_TOKEN)
  --ca FILE          PEM certificates to trust for an https:// admin URL (env
                     BATON_ADMIN_CA; default: the system's)
  -o FORMAT          text (default), json, name (names, one per line) or
                     template=GO-TEMPLATE applied to the JSON answer,
                     e.g. -o 'template={{.stable_version}}'

Exit codes: 0 done, 1 refused or failed, 2 usage, 3 a --wait or --timeout ran out.
`

// run runs the command a names, once its arguments are counted.
func (c *ctlClient) run(a *ctlArgs) error {
	name := a.pos[0]
	for _, cmd := range ctlCommands {
		if slices.Contains(cmd.names, name) {
			if n := len(a.pos) - 1; n < cmd.nargs || n > cmd.nargs+cmd.more {
				return fail(exitUsage, "usage: baton ctl %s", usageLine(name, cmd.args))
			}
			return cmd.run(c, a)
		}
	}
	return fail(exitUsage, "unknown command %q", name)
}

func (a *ctlArgs) poolPath() string { return "/v1/pools/" + url.PathEscape(a.pos[1]) }

func (a *ctlArgs) backendPath() string { return a.poolPath() + "/backends/" + url.PathEscape(a.pos[2]) }

// waitQuery is ?wait= from --wait, if given.
func (a *ctlArgs) waitQuery() url.Values {
	if w := a.flags["wait"]; w != "" {
		return url.Values{"wait": {w}}
	}
	return nil
}

func (c *ctlClient) pools(a *ctlArgs) error {
	var pools []v1.Pool
	if _, err := c.call("GET", "/v1/pools", nil, nil, &pools); err != nil || c.output == "json" {
		return err
	}
	if c.output == "name" {
		for _, p := range pools {
			fmt.Fprintln(c.stdout, p.Name)
		}
		return nil
	}
	for i, p := range pools {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		c.printPool(p)
	}
	return nil
}

func (c *ctlClient) pool(a *ctlArgs) error {
	var p v1.Pool
	if _, err := c.call("GET", a.poolPath(), nil, nil, &p); err != nil || c.output == "json" {
		return err
	}
	if c.output == "name" {
		for _, b := range p.Backends {
			fmt.Fprintln(c.stdout, b.Name)
		}
		return nil
	}
	c.printPool(p)
	return nil
}

func (c *ctlClient) backend(a *ctlArgs) error {
	if every, err := watchEvery(a); err != nil || every > 0 {
		if err != nil {
			return err
		}
		return c.backendWatch(a, every)
	}
	var b v1.Backend
	if _, err := c.call("GET", a.backendPath(), nil, nil, &b); err != nil || c.output == "json" {
		return err
	}
	c.printBackend(b)
	return nil
}

func (c *ctlClient) add(a *ctlArgs) error {
	if a.flags["address"] == "" {
		return fail(exitUsage, "add needs --address HOST:PORT")
	}
	w, err := intFlag(a, "weight")
	if err != nil {
		return err
	}
	body := v1.AddBackend{Name: a.pos[2], Address: a.flags["address"], Version: a.flags["version"],
		Standby: a.flags["standby"] != "", Weight: w}
	var b v1.Backend
	status, err := c.call("POST", a.poolPath()+"/backends", nil, body, &b)
	if err != nil || c.output == "json" {
		return err
	}
	switch {
	case status == 200:
		fmt.Fprintf(c.stdout, "%s is already in %s at %s as %s, weight %d\n", b.Name, a.pos[1], b.Address, b.Version, b.Weight)
	case a.flags["standby"] != "":
		fmt.Fprintf(c.stdout, "%s added to %s at %s as %s on standby: health checked, no traffic until a switch to %s\n",
			b.Name, a.pos[1], b.Address, b.Version, b.Version)
	default:
		fmt.Fprintf(c.stdout, "%s added to %s at %s as %s, weight %d; it gets traffic once a health check passes\n",
			b.Name, a.pos[1], b.Address, b.Version, b.Weight)
	}
	return nil
}

func (c *ctlClient) set(a *ctlArgs) error {
	w, err := intFlag(a, "weight")
	if err != nil {
		return err
	}
	body := v1.PatchBackend{Weight: w}
	if v, ok := a.flags["version"]; ok {
		body.Version = &v
	}
	if v, ok := a.flags["address"]; ok {
		body.Address = &v
	}
	if body == (v1.PatchBackend{}) {
		return fail(exitUsage, "set needs --weight, --version or --address")
	}
	var b v1.Backend
	if _, err := c.call("PATCH", a.backendPath(), nil, body, &b); err != nil || c.output == "json" {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: %s, version %s, weight %d\n", b.Name, b.Address, b.Version, b.Weight)
	return nil
}

func (c *ctlClient) remove(a *ctlArgs) error {
	var b v1.Backend
	status, err := c.call("DELETE", a.backendPath(), a.waitQuery(), nil, &b)
	if err != nil || c.output == "json" {
		return err
	}
	if status == 200 {
		fmt.Fprintf(c.stdout, "%s removed from %s: nothing in flight, no open connection\n", b.Name, a.pos[1])
	} else {
		fmt.Fprintf(c.stdout, "%s is leaving %s: no new requests; %d in flight (use --wait to wait)\n", b.Name, a.pos[1], b.Inflight)
	}
	return nil
}

func (c *ctlClient) drain(a *ctlArgs) error {
	var b v1.Backend
	status, err := c.call("POST", a.backendPath()+"/drain", a.waitQuery(), nil, &b)
	if err != nil || c.output == "json" {
		return err
	}
	if status == 200 {
		fmt.Fprintf(c.stdout, "%s drained: nothing in flight, no open connection\n", b.Name)
	} else {
		fmt.Fprintf(c.stdout, "%s draining: no new requests; %d in flight, %d open connection(s) (use --wait to wait)\n",
			b.Name, b.Inflight, b.OpenConnections)
	}
	return nil
}

func (c *ctlClient) enable(a *ctlArgs) error {
	w, err := intFlag(a, "weight")
	if err != nil {
		return err
	}
	body := v1.EnableBackend{Version: a.flags["version"], Weight: w}
	var b v1.Backend
	if _, err := c.call("POST", a.backendPath()+"/enable", nil, body, &b); err != nil || c.output == "json" {
		return err
	}
	fmt.Fprintf(c.stdout, "%s enabled as %s, weight %d; it gets traffic once a health check passes\n", b.Name, b.Version, b.Weight)
	return nil
}

func (c *ctlClient) eject(a *ctlArgs) error {
	var b v1.Backend
	if _, err := c.call("POST", a.backendPath()+"/eject", nil, nil, &b); err != nil || c.output == "json" {
		return err
	}
	fmt.Fprintf(c.stdout, "%s ejected: no new requests; %d in flight finish\n", b.Name, b.Inflight)
	return nil
}

// canaryAction is promote, rollback, hold and resume.
func (c *ctlClient) canaryAction(a *ctlArgs) error {
	cmd := a.pos[0]
	var rep v1.CanaryReport
	if _, err := c.call("POST", a.poolPath()+"/canary/"+cmd, nil, nil, &rep); err != nil || c.output == "json" {
		return err
	}
	switch cmd {
	case "promote":
		fmt.Fprintf(c.stdout, "%s is now the stable version of %s; upgrade the remaining servers one by one\n", rep.StableVersion, rep.Pool)
	case "rollback":
		fmt.Fprintf(c.stdout, "%s has no canary; the canary's backends are drained (stable: %s)\n", rep.Pool, rep.StableVersion)
	case "hold":
		fmt.Fprintf(c.stdout, "automatic canary steps of %s are on hold\n", rep.Pool)
	case "resume":
		fmt.Fprintf(c.stdout, "automatic canary steps of %s resumed\n", rep.Pool)
	}
	return nil
}

func (c *ctlClient) upgrade(a *ctlArgs) error {
	var res struct {
		Message string `json:"message"`
	}
	if _, err := c.call("POST", "/v1/upgrade", nil, nil, &res); err != nil || c.output == "json" {
		return err
	}
	fmt.Fprintln(c.stdout, res.Message)
	return nil
}

func (c *ctlClient) events(a *ctlArgs) error {
	q := url.Values{}
	if l := a.flags["limit"]; l != "" {
		q.Set("limit", l)
	}
	refused := a.flags["refused"] == "true"
	if refused {
		q.Set("refused", "true")
	}
	var evs []control.Event
	if _, err := c.call("GET", "/v1/events", q, nil, &evs); err != nil || c.output == "json" {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	if refused {
		fmt.Fprintln(tw, "TIME\tACTOR\tREQUEST\tFROM\tREFUSED")
		for _, e := range evs {
			e.Clean() // what a client sent must not reach the terminal raw
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Actor, e.Action,
				strings.TrimPrefix(e.Detail, "from "), e.Refused)
		}
		return tw.Flush()
	}
	fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tDETAIL")
	for _, e := range evs {
		e.Clean()
		target := e.Pool
		if e.Backend != "" {
			target += "/" + e.Backend
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Actor, e.Action, target, e.Detail)
	}
	return tw.Flush()
}

func (c *ctlClient) versions(a *ctlArgs) error {
	var pv v1.PoolVersions
	if _, err := c.call("GET", a.poolPath()+"/versions", nil, nil, &pv); err != nil || c.output == "json" {
		return err
	}
	if c.output == "name" {
		for _, v := range pv.Versions {
			fmt.Fprintln(c.stdout, v.Version)
		}
		return nil
	}
	head := fmt.Sprintf("pool %s: stable %s", pv.Pool, pv.StableVersion)
	if pv.CanaryVersion != "" {
		head += ", canary " + pv.CanaryVersion
	}
	fmt.Fprintf(c.stdout, "%s; an affinity cookie pins its client for %s\n", head, pv.AffinityMaxAge)
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tROLE\tBACKENDS\tINFLIGHT\tCONNS\tCOOKIES\tCOOKIES UNTIL\tGONE")
	for _, v := range pv.Versions {
		until := "-"
		if v.AffinityUntil != nil {
			until = v.AffinityUntil.Local().Format(time.TimeOnly)
		}
		gone := "no"
		if v.Gone {
			gone = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", v.Version, orDash(v.Role), statesText(v.States), v.Inflight,
			v.OpenConnections, v.AffinityCookies, until, gone)
	}
	return tw.Flush()
}

// statesText counts backends by state: "active 2, drained 1".
func statesText(states map[string]int) string {
	var parts []string
	for _, s := range []string{"active", "draining", "drained", "ejected", "removed", "relabelled"} {
		if n := states[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// waitGone is baton ctl wait-gone: it polls the pool's versions until the
// version is gone — no backend in rotation, nothing in flight or open on
// one, and (unless --ignore-affinity) no affinity cookie of it that can
// still be valid — and exits 3 naming what holds it when --timeout runs
// out. Deploy scripts run it before a step that the old version must not
// live to see (dropping a column it still reads).
func (c *ctlClient) waitGone(a *ctlArgs) error {
	version := a.pos[2]
	if !config.ValidName(version) {
		return fail(exitUsage, "VERSION must be 1-63 letters, digits, '.', '_' or '-', got %q", version)
	}
	timeout := 10 * time.Minute
	if v, ok := a.flags["timeout"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fail(exitUsage, "--timeout must be a duration such as 10m, got %q", v)
		}
		timeout = d
	}
	ignore := a.flags["ignore-affinity"] != ""
	allowUnknown := a.flags["allow-unknown"] != ""
	out := c.output
	c.output = "text" // each look prints nothing; the last answer is printed below
	defer func() { c.output = out }()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		var pv v1.PoolVersions
		path := a.poolPath() + "/versions?version=" + url.QueryEscape(version)
		if a.flags["this-instance-only"] != "" {
			path += "&this_instance_only=true"
		}
		if _, err := c.call("GET", path, nil, nil, &pv); err != nil {
			return err
		}
		v := pv.Find(version)
		if v == nil {
			// A baton before ?version= lists only versions present: it
			// cannot tell an absent version from one it never saw.
			v = &v1.VersionPresence{Version: version, States: map[string]int{}, Backends: []v1.VersionBackend{}}
		}
		if pv.Clustered && !pv.ThisInstanceOnly {
			return fail(exitFail, "pool %s is served by a cluster of batons, and each counts only its own requests in flight and the affinity cookies it gave: run wait-gone against every instance with --this-instance-only (each must exit 0)", pv.Pool)
		}
		if !v.Known {
			if !allowUnknown {
				return fail(exitFail, "baton has never seen %s in pool %s, so it cannot say it is gone (a typo, or the wrong pool or baton?); --allow-unknown waits for it anyway", version, pv.Pool)
			}
			v.Known = true // the caller vouches for it
		}
		held := v.HeldBy(ignore, time.Local)
		if len(held) == 0 {
			c.output = out
			return c.printGone(pv, version, v, ignore)
		}
		line := strings.Join(held, "; ")
		if time.Now().After(deadline) {
			return fail(exitWait, "%s is still present in %s after %s: %s", version, pv.Pool, timeout, line)
		}
		if line != last && out == "text" {
			fmt.Fprintf(c.stdout, "waiting for %s to leave %s: %s\n", version, pv.Pool, line)
			last = line
		}
		time.Sleep(min(500*time.Millisecond, time.Until(deadline)+time.Millisecond)) // polling the API
	}
}

// printGone says that version is gone from the pool.
func (c *ctlClient) printGone(pv v1.PoolVersions, version string, v *v1.VersionPresence, ignore bool) error {
	if c.output == "json" {
		if v == nil {
			v = &v1.VersionPresence{Version: version, States: map[string]int{}, Backends: []v1.VersionBackend{}, Gone: true}
		}
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s\n", data)
		return nil
	}
	cookies := "no affinity cookie of it can still be valid"
	if ignore && v != nil && v.AffinityCookies > 0 {
		held := v.HeldBy(false, time.Local) // the cookies' phrase comes last
		cookies = held[len(held)-1] + " ignored (--ignore-affinity)"
	}
	fmt.Fprintf(c.stdout, "%s is gone from %s: no backend in rotation runs it, nothing is in flight or open on one, %s\n", version, pv.Pool, cookies)
	return nil
}

func (c *ctlClient) cluster(a *ctlArgs) error {
	if len(a.pos) == 2 {
		if a.pos[1] != "reset-state" {
			return fail(exitUsage, "usage: baton ctl cluster [reset-state]")
		}
		var out v1.ClusterReset
		if _, err := c.call("POST", "/v1/cluster/reset-state", nil, nil, &out); err != nil || c.output == "json" {
			return err
		}
		fmt.Fprintf(c.stdout, "the shared state is this instance's now, at revision %d; every instance applies it\n", out.Revision)
		return nil
	}
	var cl v1.Cluster
	if _, err := c.call("GET", "/v1/cluster", nil, nil, &cl); err != nil || c.output == "json" {
		return err
	}
	if !cl.Clustered {
		fmt.Fprintln(c.stdout, "not in a cluster: this baton keeps its decisions in its state file (set cluster.etcd in the config to share them)")
		return nil
	}
	leader := cl.JudgeLeader
	if leader == "" {
		leader = "none (electing)"
	}
	fmt.Fprintf(c.stdout, "instance %s, applied revision %d, judge leader %s\n", cl.Instance, cl.AppliedRevision, leader)
	if cl.SharedStateError != "" {
		fmt.Fprintf(c.stdout, "the shared state cannot be used here: %s\n", cl.SharedStateError)
	}
	fmt.Fprintln(c.stdout)
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tPID\tHEARTBEAT\tAPPLIED\tROLE")
	for _, in := range cl.Instances {
		role := ""
		if in.Name == cl.JudgeLeader {
			role = "judge leader"
		}
		if in.Self {
			role = strings.TrimPrefix(role+", answering", ", ")
		}
		age := time.Since(in.Heartbeat).Round(100 * time.Millisecond)
		fmt.Fprintf(tw, "%s\t%d\t%s ago\t%d\t%s\n", in.Name, in.PID, age, in.AppliedRevision, role)
	}
	return tw.Flush()
}

func (c *ctlClient) canary(a *ctlArgs) error {
	path := a.poolPath() + "/canary"
	var rep v1.CanaryReport
	_, hasV := a.flags["version"]
	_, hasW := a.flags["weight"]
	switch {
	case hasV || hasW:
		if !hasV || !hasW {
			return fail(exitUsage, "canary needs both --version and --weight to start or shift a canary")
		}
		w, err := strconv.ParseFloat(a.flags["weight"], 64)
		if err != nil {
			return fail(exitUsage, "--weight must be a percentage, got %q", a.flags["weight"])
		}
		if _, err := c.call("PUT", path, nil, v1.SetCanary{Version: a.flags["version"], Weight: &w}, &rep); err != nil {
			return err
		}
	default:
		if _, err := c.call("GET", path, nil, nil, &rep); err != nil {
			return err
		}
	}
	if c.output == "text" {
		c.printCanary(rep)
	}
	if a.flags["check"] == "" {
		return nil
	}
	return checkCanary(rep, a)
}

// checkCanary passes or fails the canary as the judge does once it has a
// verdict; before that it compares the canary's error rate with the stable
// version's: not worse by more than the allowed increase, with enough
// canary requests to say so.
func checkCanary(rep v1.CanaryReport, a *ctlArgs) error {
	maxInc := 0.01
	if v := a.flags["max-error-rate-increase"]; v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			return fail(exitUsage, "--max-error-rate-increase must be a fraction 0..1, got %q", v)
		}
		maxInc = f
	}
	minReq := 50
	if n, err := intFlag(a, "min-requests"); err != nil {
		return err
	} else if n != nil {
		minReq = *n
	}
	if rep.CanaryVersion == "" {
		return fail(exitFail, "pool %s has no canary to check", rep.Pool)
	}
	// The judge's verdict decides when it has one; while it still gathers
	// evidence, compare error rates with the given allowance.
	switch rep.Verdict {
	case "pass":
		return nil
	case "fail":
		return fail(exitFail, "the judge fails canary %s: %s", rep.CanaryVersion, rep.Reason)
	}
	var stable, can *v1.VersionReport
	for i := range rep.Versions {
		switch rep.Versions[i].Role {
		case "stable":
			stable = &rep.Versions[i]
		case "canary":
			can = &rep.Versions[i]
		}
	}
	if can == nil || can.Requests < uint64(minReq) {
		n := uint64(0)
		if can != nil {
			n = can.Requests
		}
		return fail(exitFail, "not enough evidence: the canary served %d requests, --min-requests is %d", n, minReq)
	}
	base := 0.0
	if stable != nil {
		base = stable.ErrorRate
	}
	if can.ErrorRate > base+maxInc {
		return fail(exitFail, "canary %s is worse: error rate %.2f%% against %.2f%% for %s (allowed increase %.2f points)",
			can.Version, 100*can.ErrorRate, 100*base, rep.StableVersion, 100*maxInc)
	}
	return nil
}

func (c *ctlClient) printPool(p v1.Pool) {
	head := fmt.Sprintf("pool %s: stable %s", p.Name, p.StableVersion)
	if p.Canary != nil {
		head += fmt.Sprintf(", canary %s at %g%%", p.Canary.Version, p.Canary.Weight)
		if p.Canary.Held {
			head += " (held)"
		}
	}
	fmt.Fprintln(c.stdout, head)
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tVERSION\tWEIGHT\tSTATE\tHEALTH\tINFLIGHT\tCONNS\tREQUESTS\tERRORS")
	for _, b := range p.Backends {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\n", b.Name, b.Address, b.Version, b.Weight, b.State,
			b.Health, b.Inflight, b.OpenConnections, b.Requests, b.Errors)
	}
	_ = tw.Flush()
}

func (c *ctlClient) printBackend(b v1.Backend) {
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name\t%s\naddress\t%s\nversion\t%s\nweight\t%d (effective %d)\nstate\t%s\nhealth\t%s\n"+
		"inflight\t%d\nopen connections\t%d\nrequests\t%d\nerrors\t%d\n",
		b.Name, b.Address, b.Version, b.Weight, b.EffectiveWeight, b.State, b.Health, b.Inflight, b.OpenConnections, b.Requests, b.Errors)
	if b.LastError != "" {
		fmt.Fprintf(tw, "last error\t%s\n", b.LastError)
	}
	_ = tw.Flush()
}

func (c *ctlClient) printCanary(rep v1.CanaryReport) {
	head := fmt.Sprintf("pool %s: stable %s", rep.Pool, rep.StableVersion)
	if rep.CanaryVersion != "" {
		head += fmt.Sprintf(", canary %s at %g%%", rep.CanaryVersion, rep.Weight)
	} else {
		head += ", no canary"
	}
	if rep.Held {
		head += " (held)"
	}
	fmt.Fprintf(c.stdout, "%s; since %s\n", head, rep.Since.Local().Format(time.DateTime))
	if rep.Verdict != "" {
		step := ""
		if len(rep.Steps) > 0 {
			step = fmt.Sprintf(" (step %d of %d: %v)", rep.Step, len(rep.Steps), rep.Steps)
		}
		fmt.Fprintf(c.stdout, "verdict: %s%s — %s\n", rep.Verdict, step, rep.Reason)
	}
	if e := rep.Evidence; e.JudgedBy != "" {
		fmt.Fprintf(c.stdout, "judged by %s on the evidence of %d baton processes: %s\n", e.JudgedBy, len(e.Instances), strings.Join(e.Instances, ", "))
	}
	if pc := rep.Previous; pc != nil {
		fmt.Fprintln(c.stdout, previousLine(pc))
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tROLE\tREQUESTS\tERRORS\tERROR RATE\tP50\tP90\tP99")
	ms := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return strconv.FormatFloat(math.Round(*v*100)/100, 'f', -1, 64) + "ms"
	}
	for _, v := range rep.Versions {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.2f%%\t%s\t%s\t%s\n", v.Version, v.Role, v.Requests, v.Errors, 100*v.ErrorRate,
			ms(v.P50ms), ms(v.P90ms), ms(v.P99ms))
	}
	_ = tw.Flush()
	if len(rep.Signatures) == 0 {
		return
	}
	fmt.Fprintln(c.stdout, "error signatures:")
	tw = tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "CLASS\tSIGNATURE\t%s\t%s\tEXAMPLE\n", strings.ToUpper(rep.StableVersion), strings.ToUpper(rep.CanaryVersion))
	for _, s := range rep.Signatures {
		ex := ""
		if s.Example != nil {
			ex = s.Example.Path
			if s.Example.Body != "" {
				ex += " " + strconv.Quote(s.Example.Body[:min(len(s.Example.Body), 60)])
			}
		}
		class := s.Class
		if s.FailsRelease {
			class += " (fails)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", class, s.Key, s.Counts[rep.StableVersion], s.Counts[rep.CanaryVersion], ex)
	}
	_ = tw.Flush()
}

// previousLine says how the last canary ended: "previous canary v42:
// rolled back by judge at TIME — fail: REASON".
func previousLine(pc *v1.PreviousCanary) string {
	at := pc.At.Local().Format(time.DateTime)
	line := fmt.Sprintf("previous canary %s: ended at %s", pc.Version, at)
	if pc.Outcome != "" {
		line = fmt.Sprintf("previous canary %s: %s by %s at %s", pc.Version, strings.ReplaceAll(pc.Outcome, "_", " "), pc.By, at)
	}
	if pc.Verdict == "" {
		return line + " (the judge had reached no verdict)"
	}
	return line + " — " + pc.Verdict + ": " + pc.Reason
}

// switchVersion is baton ctl switch: POST …/switch, then with --wait the
// watch's outcome.
func (c *ctlClient) switchVersion(a *ctlArgs) error {
	if a.flags["to"] == "" {
		return fail(exitUsage, "switch needs --to VERSION")
	}
	if a.flags["watch"] == "true" {
		return fail(exitUsage, "switch --watch needs a duration such as 60s")
	}
	body := v1.StartSwitch{To: a.flags["to"], Watch: a.flags["watch"]}
	if m := a.flags["max-error-rate"]; m != "" {
		f, err := strconv.ParseFloat(m, 64)
		if err != nil {
			return fail(exitUsage, "--max-error-rate must be a fraction such as 0.05, got %q", m)
		}
		body.MaxErrorRate = f
	}
	poolPath := a.poolPath()
	var p v1.Pool
	out := c.output
	if a.flags["wait"] != "" {
		c.output = "text" // the answer that counts comes after the wait
	}
	_, err := c.call("POST", poolPath+"/switch", nil, body, &p)
	c.output = out
	if err != nil || (c.output == "json" && a.flags["wait"] == "") {
		return err
	}
	if c.output == "text" && p.Switch != nil {
		fmt.Fprintf(c.stdout, "%s switched from %s to %s: %s take every new request, %s drained; guards watch %s until %s\n",
			p.Name, p.Switch.From, p.Switch.To, strings.Join(p.Switch.New, ", "), strings.Join(p.Switch.Old, ", "),
			p.Switch.To, p.Switch.Until.Local().Format(time.TimeOnly))
	}
	w := a.flags["wait"]
	if w == "" {
		return nil
	}
	d, _ := time.ParseDuration(w) // checked by newCtlClient
	at := time.Time{}
	if p.Switch != nil {
		at = p.Switch.At
	}
	deadline := time.Now().Add(d)
	for {
		p = v1.Pool{} // absent fields must read as absent
		if _, err := c.call("GET", poolPath, nil, nil, &p); err != nil {
			return err
		}
		if p.Switch == nil && p.LastSwitch != nil && !p.LastSwitch.At.Before(at) {
			break
		}
		if time.Now().After(deadline) {
			return fail(exitWait, "the switch of %s is still watched; run baton ctl pool %s later to see how it ended", p.Name, p.Name)
		}
		time.Sleep(250 * time.Millisecond) // polling the API
	}
	ls := p.LastSwitch
	if c.output == "json" {
		data, _ := json.Marshal(ls)
		fmt.Fprintf(c.stdout, "%s\n", data)
	} else {
		fmt.Fprintf(c.stdout, "switch to %s %s: %s\n", ls.To, strings.ReplaceAll(ls.Outcome, "_", " "), ls.Reason)
	}
	switch ls.Outcome {
	case "done":
	case "kept":
		return fail(exitFail, "a guard fired on %s but nothing was left to switch back to; %s still serves: %s", p.Name, ls.To, ls.Reason)
	default:
		return fail(exitFail, "%s switched back to %s: %s", p.Name, ls.From, ls.Reason)
	}
	return nil
}
