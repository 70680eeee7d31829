package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
)

type etaOptions struct {
	students, rateLimit int
	logDir              string
}

// runETA runs a first backfill on a pseudo-terminal, as an operator at a shell sees it, and
// compares the ETA its bar shows all along with the time it really took.
func runETA(ctx context.Context, args []string, out io.Writer) error {
	var o etaOptions
	fs := flag.NewFlagSet("eta", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 5000, "synthetic students, each with a contact")
	fs.IntVar(&o.rateLimit, "rate-limit", 20, "requests per 10 s, for the emulator and for --rate-limit")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	h, err := startScenario(ctx, out, fs, args, func() harnessOptions { return harnessOptions{logDir: o.logDir, rateLimit: o.rateLimit} })
	if err != nil {
		return err
	}
	defer h.close()
	if _, err := h.seed(ctx, o.students, 100, true); err != nil {
		return err
	}
	if _, err := h.oneShot(ctx, "provision"); err != nil {
		return err
	}
	time.Sleep(10 * time.Second) // provisioning's requests leave the emulator's window
	h.emu.ResetStats()
	limit := fmt.Sprintf("%d/10s", o.rateLimit)
	h.logf("progress-sync backfill --rate-limit %s on a pseudo-terminal", limit)
	frames, took, err := backfillOnTerminal(ctx, h, limit)
	if err != nil {
		return err
	}
	st := h.emu.Stats()
	fmt.Fprintf(out, "HubSpot requests: %d (%d batch/read, %d batch/update, %d answered 429): %.2f a second\n",
		st.Requests, st.BatchReads, st.BatchUpdates, st.RateLimited, float64(st.Requests)/took.Seconds())
	return reportETA(out, o, frames, took)
}

// frame is one redraw of the bar: when, how many students were done, the ETA shown.
type frame struct {
	at   time.Duration
	done int
	eta  time.Duration
}

var barFrame = regexp.MustCompile(`ETA ([0-9hms.]+),.*?\((\d+)/(\d+)`)

// backfillOnTerminal runs the backfill with its stderr on a pseudo-terminal and reads every
// frame of the bar.
func backfillOnTerminal(ctx context.Context, h *harness, limit string) ([]frame, time.Duration, error) {
	cmd := exec.CommandContext(ctx, h.bin, "backfill", "--rate-limit", limit)
	cmd.Env = h.env("LOG_LEVEL=warn")
	log, err := os.Create(h.dir + "/eta-backfill.out")
	if err != nil {
		return nil, 0, err
	}
	defer log.Close()
	cmd.Stdout = log
	term, tty, err := pty.Open()
	if err != nil {
		return nil, 0, fmt.Errorf("open a pseudo-terminal: %w", err)
	}
	defer term.Close()
	if err := pty.Setsize(term, &pty.Winsize{Rows: 40, Cols: 160}); err != nil {
		return nil, 0, err
	}
	cmd.Stderr = tty
	began := time.Now()
	if err := cmd.Start(); err != nil {
		tty.Close()
		return nil, 0, err
	}
	tty.Close()
	var frames []frame
	// A backfill that draws nothing for 30 s is stuck: its goroutines go to the output
	// (SIGQUIT), which --log-dir keeps.
	var lastFrame atomic.Int64
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if idle := time.Since(began) - time.Duration(lastFrame.Load()); idle > 30*time.Second {
				fmt.Fprintf(log, "bench: no frame for %s: sending SIGQUIT for the goroutines\n", idle.Round(time.Second))
				_ = cmd.Process.Signal(syscall.SIGQUIT)
				return
			}
		}
	}()
	readErr := readFrames(term, began, func(text string, at time.Duration) {
		lastFrame.Store(int64(at))
		fmt.Fprintln(log, text)
		m := barFrame.FindStringSubmatch(text)
		if m == nil {
			return
		}
		eta, err1 := time.ParseDuration(m[1])
		done, err2 := strconv.Atoi(m[2])
		if err1 == nil && err2 == nil {
			frames = append(frames, frame{at: at, done: done, eta: eta})
		}
	})
	if err := cmd.Wait(); err != nil {
		return nil, 0, fmt.Errorf("backfill: %w (output in %s; reading it ended with %v)", err, log.Name(), readErr)
	}
	if len(frames) == 0 {
		return nil, 0, errors.New("the backfill drew no bar on the terminal")
	}
	return frames, time.Since(began), nil
}

// readFrames cuts the terminal's output into frames at carriage returns and newlines (the
// bar redraws itself after a \r), each stamped with when its first byte arrived: a frame
// ends only when the next one begins, which may be a batch later.
func readFrames(r io.Reader, began time.Time, frame func(text string, at time.Duration)) error {
	buf := make([]byte, 4096)
	var cur []byte
	var at time.Duration
	for {
		n, err := r.Read(buf)
		now := time.Since(began)
		for _, b := range buf[:n] {
			if b == '\r' || b == '\n' {
				if len(cur) > 0 {
					frame(string(cur), at)
				}
				cur = cur[:0]
				continue
			}
			if len(cur) == 0 {
				at = now
			}
			cur = append(cur, b)
		}
		if err != nil {
			if len(cur) > 0 {
				frame(string(cur), at)
			}
			return err // EIO once the backfill has closed the terminal
		}
	}
}

// reportETA prints the ETA shown at each tenth of the run against the time really left.
func reportETA(out io.Writer, o etaOptions, frames []frame, took time.Duration) error {
	fmt.Fprintf(out, "\neta summary: backfill of %d students at --rate-limit %d/10s took %.1f s; %d frames of the bar\n",
		o.students, o.rateLimit, took.Seconds(), len(frames))
	fmt.Fprintf(out, "  %8s %8s %10s %10s %7s\n", "at", "done", "ETA shown", "real left", "error")
	worst := 0.0
	next := 0.0
	for _, f := range frames {
		left := took - f.at
		share := float64(f.done) / float64(o.students)
		if left < took/10 {
			break // the last tenth: seconds left, where a second off is a large share
		}
		e := (f.eta - left).Seconds() / left.Seconds()
		worst = max(worst, abs(e))
		if share >= next {
			fmt.Fprintf(out, "  %7.1fs %8d %9.1fs %9.1fs %+6.1f%%\n", f.at.Seconds(), f.done, f.eta.Seconds(), left.Seconds(), 100*e)
			next = share + 0.1
		}
	}
	fmt.Fprintf(out, "  worst error over every frame before the last tenth of the run: %.1f%% (target within 15%%: %s)\n", 100*worst, verdict(worst <= 0.15))
	return nil
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
