package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/control"
)

// watchEvery reads backend's --watch [INTERVAL]: 0 without --watch.
func watchEvery(a *ctlArgs) (time.Duration, error) {
	w, ok := a.flags["watch"]
	switch {
	case !ok:
		return 0, nil
	case w == "true":
		return 2 * time.Second, nil // the monitor's own step
	}
	d, err := time.ParseDuration(w)
	if err != nil || d < 500*time.Millisecond {
		return 0, fail(exitUsage, "--watch takes an interval of at least 500ms such as 5s, got %q", w)
	}
	return d, nil
}

// backendWatch is baton ctl backend POOL NAME --watch: the backend and its
// monitor, drawn again every interval until Ctrl-C.
func (c *ctlClient) backendWatch(a *ctlArgs, every time.Duration) error {
	if c.output != "text" {
		return fail(exitUsage, "--watch draws text; for JSON, GET %s/history", a.backendPath())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := colourful(c.stdout)
	for {
		var b v1.Backend
		var h control.BackendHistory
		_, err := c.call("GET", a.backendPath(), nil, nil, &b)
		if err == nil {
			_, err = c.call("GET", a.backendPath()+"/history", nil, nil, &h)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if tty {
			fmt.Fprint(c.stdout, "\x1b[H\x1b[2J") // the screen afresh, as watch(1) does
		} else {
			fmt.Fprintf(c.stdout, "--- %s\n", time.Now().Format(time.TimeOnly))
		}
		c.printBackend(b)
		fmt.Fprintln(c.stdout)
		printMonitor(c.stdout, &h)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// monitorRow is one line of the monitor: figures of the latest sample and
// of the whole window.
type monitorRow struct {
	name                      string
	s                         *control.VersionSeries
	nowRPS, nowErr, p50, p99  *float64
	meanRPS, winErr, worstP99 *float64
}

func newMonitorRow(name string, s *control.VersionSeries) monitorRow {
	r := monitorRow{name: name, s: s}
	if s == nil {
		return r
	}
	for i := len(s.RequestsPerSecond) - 1; i >= 0; i-- {
		if s.RequestsPerSecond[i] != nil {
			r.nowRPS, r.nowErr, r.p50, r.p99 = s.RequestsPerSecond[i], at(s.ErrorRate, i), at(s.P50, i), at(s.P99, i)
			break
		}
	}
	var sum, errs, n float64
	for i, rps := range s.RequestsPerSecond {
		if rps == nil {
			continue
		}
		n++
		sum += *rps
		if e := at(s.ErrorRate, i); e != nil {
			errs += *e * *rps
		}
		if p := at(s.P99, i); p != nil && (r.worstP99 == nil || *p > *r.worstP99) {
			r.worstP99 = p
		}
	}
	if n > 0 {
		mean := sum / n
		r.meanRPS = &mean
	}
	if sum > 0 {
		e := errs / sum
		r.winErr = &e
	}
	return r
}

func at(s []*float64, i int) *float64 {
	if i < len(s) {
		return s[i]
	}
	return nil
}

// printMonitor shows a backend beside the average backend of its version
// and of the stable version: the latest sample and the last 15 minutes.
func printMonitor(w io.Writer, h *control.BackendHistory) {
	rows := []monitorRow{newMonitorRow(h.Backend, h.Series), newMonitorRow("average "+h.Version, h.VersionAverage)}
	if h.StableVersion != "" && h.StableVersion != h.Version {
		rows = append(rows, newMonitorRow("average "+h.StableVersion+" (stable)", h.StableAverage))
	} else {
		rows[1].name += " (stable)"
	}
	fmt.Fprintf(w, "monitor: a sample every %gs; now is the latest, window the last %d samples\n", h.Interval, len(h.T))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tREQ/S\tERRORS\tP50\tP99\tREQ/S (window)\tERRORS (window)\tWORST P99")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.name, num(r.nowRPS), pct(r.nowErr), msOf(r.p50), msOf(r.p99),
			num(r.meanRPS), pct(r.winErr), msOf(r.worstP99))
	}
	_ = tw.Flush()
	if h.Series != nil {
		fmt.Fprintf(w, "%s req/s  %s\n", h.Backend, sparkline(h.Series.RequestsPerSecond, 60))
		fmt.Fprintf(w, "%s errors %s\n", h.Backend, sparkline(h.Series.ErrorRate, 60))
	}
}

func num(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *v)
}

func pct(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", *v*100)
}

func msOf(v *float64) string {
	if v == nil {
		return "-"
	}
	return msString(*v)
}

// sparkline draws the last width values of s, scaled to their maximum;
// a gap is a space.
func sparkline(s []*float64, width int) string {
	if len(s) > width {
		s = s[len(s)-width:]
	}
	var hi float64
	for _, v := range s {
		if v != nil && *v > hi {
			hi = *v
		}
	}
	const bars = "▁▂▃▄▅▆▇█"
	levels := []rune(bars)
	var b strings.Builder
	for _, v := range s {
		switch {
		case v == nil:
			b.WriteByte(' ')
		case hi == 0:
			b.WriteRune(levels[0])
		default:
			b.WriteRune(levels[int(*v/hi*float64(len(levels)-1)+0.5)])
		}
	}
	return b.String()
}
