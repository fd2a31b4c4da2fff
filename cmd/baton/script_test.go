package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScript runs the transcripts in testdata/script against the baton
// binary TestMain built, found on PATH as "baton".
//
// Besides the standard commands, scripts have
//
//	exits CODE PROGRAM [ARGS...]
//
// which runs PROGRAM like exec, keeps its stdout and stderr for the
// commands that follow, and fails unless it exited with exactly CODE:
// `! exec` only tells a failure from a success, and baton's exit codes
// (1: the config is invalid, 2: the command line is wrong) are part of
// its contract.
func TestScript(t *testing.T) {
	if batonBin == "" {
		t.Fatal("TestMain did not build the baton binary")
	}
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "script"),
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", filepath.Dir(batonBin)+string(os.PathListSeparator)+env.Getenv("PATH"))
			env.Setenv("BATON_VERSION", testVersion)
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exits": cmdExits,
		},
	})
}

func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! exits")
	}
	if len(args) < 2 {
		ts.Fatalf("usage: exits CODE PROGRAM [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: bad code %q", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exits: running %s: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with code %d, want %d", args[1], got, want)
	}
}
