//go:build linux

package filetransfer

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: allocate without changing the
// file's size, which resume reads as "bytes received".
const fallocKeepSize = 0x1

// preallocate reserves size bytes for a staging file so that the chunk
// writes that follow do not allocate blocks one by one (on ext4 that
// allocation was most of the receiver's write cost), and so that a full
// disk shows up at open rather than in the middle of a transfer. Best
// effort: file systems without fallocate just skip it.
func preallocate(f *os.File, size int64) error {
	if size <= 0 {
		return nil
	}
	err := syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, size)
	if err == syscall.EOPNOTSUPP || err == syscall.ENOSYS {
		return nil
	}
	return err
}

// startWriteback asks the kernel to start writing back [off, off+n) of f
// without waiting for it (sync_file_range with SYNC_FILE_RANGE_WRITE), so
// the fsync at commit finds little left to do. Best effort.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// openDirect opens path for writing with O_DIRECT, or returns nil where the
// file system does not support it (tmpfs, some overlays).
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}
