//go:build linux

package diskstore

import (
	"os"
	"path/filepath"
	"syscall"
)

// renameInto moves the file at path to name inside dir with renameat(2),
// relative to the directory handle so no path below the store is resolved
// again. It fails with EXDEV across file systems; the caller then copies.
func renameInto(path string, dir *os.Root, name string) error {
	srcDir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer srcDir.Close()
	dstDir, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer dstDir.Close()
	return syscall.Renameat(int(srcDir.Fd()), filepath.Base(path), int(dstDir.Fd()), name)
}

// renameOut is renameInto's inverse: it moves name in dir back to path.
func renameOut(dir *os.Root, name string, path string) error {
	srcDir, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer srcDir.Close()
	dstDir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dstDir.Close()
	return syscall.Renameat(int(srcDir.Fd()), name, int(dstDir.Fd()), filepath.Base(path))
}
