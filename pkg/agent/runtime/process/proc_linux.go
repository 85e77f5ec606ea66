//go:build linux

package process

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// childAttr puts ComfyUI in its own process group (a signal to the
// agent's terminal does not reach it behind the agent's back, and a kill
// takes its children too) and has the kernel kill it when the agent dies,
// however it dies (SIGKILL, OOM killer): an orphan ComfyUI would hold its
// GPU memory and its port. Pdeathsig fires when the thread that started
// the child exits; the Go runtime only retires threads a goroutine locked
// and did not unlock, which the agent never does.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// procIdentity reads a process's start time in clock ticks since boot
// (/proc/<pid>/stat field 22): with the pid it names one process, not
// whichever reuses the pid later. A zombie (exited, not reaped yet)
// counts as gone.
func procIdentity(pid int) (start uint64, alive bool, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): field 22 is f[19].
	if len(f) < 20 {
		return 0, false, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0] != "Z" && f[0] != "X", err
}
