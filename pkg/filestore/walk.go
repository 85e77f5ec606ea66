package filestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/atelier-run/atelier/pkg/datalayout"
)

// ErrQuotaExceeded reports that a participant's files would exceed their
// disk quota. It lives here, beside the other file errors, so that the proxy,
// the broker's receiver and the agent can all recognise it (see
// pkg/retention for the check itself).
var ErrQuotaExceeded = errors.New("disk quota exceeded")

// Walker is implemented by stores that can enumerate their files, which
// retention and usage reports need. Disk and S3 implement it.
type Walker interface {
	// Users lists the participants that have a folder in the store, sorted.
	Users(ctx context.Context) ([]string, error)
	// Walk calls fn for every regular file in user's kind folder,
	// subfolders included, in no particular order. Links, hidden files (the
	// store's temporary files among them) and names the store would refuse
	// are skipped, never followed. An error from fn stops the walk and is
	// returned.
	Walk(ctx context.Context, user string, kind Kind, fn func(Info) error) error
}

var _ Walker = (*Disk)(nil)

// Users implements Walker.
func (d *Disk) Users(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(d.layout.InstancesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: list users: %w", err)
	}
	var users []string
	for _, e := range entries {
		if e.IsDir() && e.Type()&fs.ModeSymlink == 0 && datalayout.ValidUserID(e.Name()) == nil {
			users = append(users, e.Name())
		}
	}
	sort.Strings(users)
	return users, nil
}

// Walk implements Walker. It descends through os.Root handles with the same
// link checks as Open, so a link planted in a participant's folder neither
// leads the walk elsewhere nor gets counted.
func (d *Disk) Walk(ctx context.Context, user string, kind Kind, fn func(Info) error) error {
	ref, dir, err := d.openDir(ctx, Ref{User: user, Kind: kind, Name: "x"}, false)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("filestore: walk %s/%s: %w", user, kind, err)
	}
	defer dir.Close()
	return walkDir(ctx, dir, Ref{User: ref.User, Kind: ref.Kind}, 0, fn)
}

func walkDir(ctx context.Context, dir *os.Root, at Ref, depth int, fn func(Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := dir.Open(".")
	if err != nil {
		return err
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, e := range entries {
		if ValidateName(e.Name()) != nil {
			continue
		}
		switch {
		case e.Type().IsRegular():
			fi, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			r := at
			r.Name = e.Name()
			if err := fn(Info{Ref: r, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
		case e.IsDir() && depth < MaxSubfolderDep-1:
			child, err := openChildDir(dir, e.Name(), false)
			if err != nil {
				continue // a link, or gone: not ours to walk
			}
			sub := at
			sub.Subfolder = strings.TrimPrefix(at.Subfolder+"/"+e.Name(), "/")
			err = walkDir(ctx, child, sub, depth+1, fn)
			child.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}
