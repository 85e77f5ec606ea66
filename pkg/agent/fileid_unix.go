//go:build unix

package agent

import (
	"io/fs"
	"syscall"
)

// fileID names a file's inode: hard links share it (an input placed in
// ComfyUI's folder from the cache takes its space once).
type fileID struct{ dev, ino uint64 }

// fileOwner is the uid that owns the file.
func fileOwner(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

func fileIdentity(fi fs.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), uint64(st.Ino)}, true //nolint:unconvert // Dev's type varies by platform
}
