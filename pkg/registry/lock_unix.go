//go:build unix

package registry

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive advisory lock on path (created if needed), so a
// CLI and a running proxy do not interleave read-modify-write cycles.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
