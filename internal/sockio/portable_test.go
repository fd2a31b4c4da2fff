package sockio_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// TestBuildsOffLinux: sockio makes its calls by Linux's numbers; on other
// systems it must still build (illumos has no SYS_WRITE and another Iovec,
// AIX no SYS_READ), or every package that uses it, and baton, stops
// building there. Vetted, tests included, with the go command that runs
// this test; skipped with -short.
func TestBuildsOffLinux(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds with the go command")
	}
	gocmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gocmd); err != nil {
		t.Skipf("no go command: %v", err)
	}
	for _, target := range [][2]string{{"illumos", "amd64"}, {"darwin", "arm64"}, {"aix", "ppc64"}} {
		cmd := exec.Command(gocmd, "vet", ".")
		cmd.Env = append(os.Environ(), "GOOS="+target[0], "GOARCH="+target[1], "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s GOARCH=%s go vet ./internal/sockio: %v\n%s", target[0], target[1], err, out)
		}
	}
}
