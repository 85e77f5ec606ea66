//go:build !linux

package process

import (
	"errors"
	"syscall"
)

// childAttr puts ComfyUI in its own process group. Outside Linux there is
// no parent-death signal: a killed agent leaves its ComfyUIs running, and
// the next start cannot tell them from a process that reused the pid, so
// it leaves them too (Linux is the supported GPU box).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func procIdentity(int) (uint64, bool, error) {
	return 0, false, errors.New("process identity: not supported on this system")
}
