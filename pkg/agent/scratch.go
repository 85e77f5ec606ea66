package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/atelier-run/atelier/pkg/wire"
)

// Scratch is the GPU box's ephemeral block storage (the seed layout):
//
//	<root>/inputs/<user>/          uploads staged for jobs (ComfyUI's input dir)
//	<root>/outputs/<slot>/<user>/  what jobs write (each ComfyUI's output dir)
//	<root>/temp/<slot>/            each ComfyUI's temp dir
//	<root>/cache/inputs/           the agent's content-addressed input cache
//	<root>/logs/                   ComfyUI logs and pid files (process runtime)
//
// The agent rewrites every prompt so a participant's files live under
// <user>/, which is what makes one shared input folder safe. Outputs get a
// folder per slot (GPU) on top: ComfyUI numbers a saved file by scanning
// its output folder, so two ComfyUIs sharing one would pick the same name
// for the same prefix and overwrite each other. (A single ComfyUI started
// by someone else, linked by Prepare, writes to <root>/outputs/<user>/.)
type Scratch struct {
	Root string
}

// DefaultScratchRoot is the seed layout's block storage mount.
const DefaultScratchRoot = "/mnt/scratch"

// Inputs, Outputs and Temp are the layout's folders.
func (s Scratch) Inputs() string  { return filepath.Join(s.Root, "inputs") }
func (s Scratch) Outputs() string { return filepath.Join(s.Root, "outputs") }
func (s Scratch) Temp() string    { return filepath.Join(s.Root, "temp") }

// Cache is the agent's input cache folder.
func (s Scratch) Cache() string { return filepath.Join(s.Root, "cache", "inputs") }

// PrepareOptions says what `atelier-agent prepare` sets up.
type PrepareOptions struct {
	// Users get their inputs/<user>/ and outputs/<user>/ folders now
	// (the agent also creates them on demand).
	Users []string
	// ComfyUIDir, when set, is a ComfyUI checkout whose input/ and
	// output/ become links into the scratch layout, for a ComfyUI started
	// without --input-directory/--output-directory.
	ComfyUIDir string
}

// Prepare creates the scratch layout and the ComfyUI links. It is
// idempotent. An existing, non-empty input/ or output/ folder in the
// ComfyUI checkout is left alone (an error says so): it is someone's data.
func (s Scratch) Prepare(o PrepareOptions) error {
	for _, d := range []string{s.Inputs(), s.Outputs(), s.Temp(), s.Cache()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("prepare scratch: %w", err)
		}
	}
	for _, u := range o.Users {
		if err := wire.ValidateToken("user", u); err != nil {
			return err
		}
		for _, d := range []string{filepath.Join(s.Inputs(), u), filepath.Join(s.Outputs(), u)} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("prepare scratch: %w", err)
			}
		}
	}
	if o.ComfyUIDir == "" {
		return nil
	}
	for link, target := range map[string]string{"input": s.Inputs(), "output": s.Outputs()} {
		if err := replaceWithLink(filepath.Join(o.ComfyUIDir, link), target); err != nil {
			return err
		}
	}
	return nil
}

// replaceWithLink makes path a symbolic link to target, replacing an
// empty folder or a link pointing elsewhere.
func replaceWithLink(path, target string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		if cur, _ := os.Readlink(path); cur == target {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	case fi.IsDir():
		if err := os.Remove(path); err != nil { // fails unless empty
			return fmt.Errorf("prepare: %s is a folder with files; move them to %s and run again: %w", path, target, err)
		}
	default:
		return fmt.Errorf("prepare: %s exists and is not a folder or link", path)
	}
	if err := os.Symlink(target, path); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	return nil
}

// Usage is the disk space used under the root, in bytes (allocated
// blocks would need a syscall per platform; file sizes are what quotas
// and operators reason about). A file with several hard links under the
// root (an input placed from the cache) counts once.
func (s Scratch) Usage(ctx context.Context) (int64, error) {
	var total int64
	seen := map[fileID]bool{}
	err := filepath.WalkDir(s.Root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				if id, ok := fileIdentity(fi); ok {
					if seen[id] {
						return nil
					}
					seen[id] = true
				}
				total += fi.Size()
			}
		}
		return nil
	})
	return total, err
}
