package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
)

// killWait bounds the wait for a leftover ComfyUI to die after SIGKILL;
// leftoverPoll is how often /proc is read meanwhile.
const (
	killWait     = 10 * time.Second
	leftoverPoll = 20 * time.Millisecond
)

// A pid file per slot (<LogDir>/comfyui-<slot>.pid: "pid start-time")
// names the ComfyUI the process runtime started for that slot. A kernel
// kills the children of a dead agent on Linux (childAttr), but a ComfyUI
// that outlived its agent anyway (another system, a child that ignored
// the signal while exiting) would hold the slot's port and GPU memory:
// the next start stops it first, if the pid still names that process.

func (p *Runtime) pidFile(slot string) string {
	return filepath.Join(p.LogDir, "comfyui-"+slot+".pid")
}

// writePID records the slot's new process.
func (p *Runtime) writePID(slot string, pid int) error {
	start, _, err := procIdentity(pid)
	if err != nil {
		start = 0 // unknown: a later start will not touch it
	}
	path := p.pidFile(slot)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", pid, start), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// removePID forgets the slot's process, if the file still names pid.
func (p *Runtime) removePID(slot string, pid int) {
	path := p.pidFile(slot)
	if got, _, err := readPIDFile(path); err == nil && got == pid {
		_ = os.Remove(path)
	}
}

func readPIDFile(path string) (pid int, start uint64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("%s: want \"pid start-time\"", path)
	}
	if pid, err = strconv.Atoi(f[0]); err != nil || pid <= 1 {
		return 0, 0, fmt.Errorf("%s: bad pid %q", path, f[0])
	}
	if start, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("%s: bad start time %q", path, f[1])
	}
	return pid, start, nil
}

// stopLeftover stops the process the slot's pid file names, when it is
// still the process that was started (same pid and start time): its
// group gets SIGTERM, then SIGKILL after StopGrace. It returns once the
// process is gone.
func (p *Runtime) stopLeftover(ctx context.Context, slot string) error {
	path := p.pidFile(slot)
	pid, start, err := readPIDFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		p.Logger.Warn().Err(err).Msg("ignoring an unreadable pid file")
		_ = os.Remove(path)
		return nil
	}
	same := func() bool {
		s, alive, err := procIdentity(pid)
		return err == nil && alive && start != 0 && s == start
	}
	if !same() {
		_ = os.Remove(path) // gone, or the pid names another process now
		return nil
	}
	p.Logger.Warn().Str("slot", slot).Int("pid", pid).Msg("stopping a ComfyUI left by an earlier run")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		_ = syscall.Kill(-pid, sig)
		_ = syscall.Kill(pid, sig) // in case it left its group
		wait := p.StopGrace
		if sig == syscall.SIGKILL {
			wait = killWait
		}
		// Not our child: nothing to wait on but /proc.
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
			if !same() {
				_ = os.Remove(path)
				return nil
			}
			if !backoff.Sleep(ctx, leftoverPoll) {
				return ctx.Err()
			}
		}
	}
	return fmt.Errorf("process runtime: ComfyUI %d left by an earlier run does not stop", pid)
}
