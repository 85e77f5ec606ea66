//go:build !unix

package agent

import "io/fs"

type fileID struct{ dev, ino uint64 }

func fileIdentity(fs.FileInfo) (fileID, bool) { return fileID{}, false }

func fileOwner(fs.FileInfo) (int, bool) { return 0, false }
