package diskstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
)

var _ filestore.Walker = (*Store)(nil)

// Users implements filestore.Walker.
func (d *Store) Users(ctx context.Context) ([]string, error) {
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

// Walk implements filestore.Walker. It descends through os.Root handles with the same
// link checks as Open, so a link planted in a participant's folder neither
// leads the walk elsewhere nor gets counted.
func (d *Store) Walk(ctx context.Context, user string, kind filestore.Kind, fn func(filestore.Info) error) error {
	ref, dir, err := d.openDir(ctx, filestore.Ref{User: user, Kind: kind, Name: "x"}, false)
	if errors.Is(err, filestore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("filestore: walk %s/%s: %w", user, kind, err)
	}
	defer dir.Close()
	return walkDir(ctx, dir, filestore.Ref{User: ref.User, Kind: ref.Kind}, 0, fn)
}

func walkDir(ctx context.Context, dir *os.Root, at filestore.Ref, depth int, fn func(filestore.Info) error) error {
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
		if filestore.ValidateName(e.Name()) != nil {
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
			if err := fn(filestore.Info{Ref: r, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
		case e.IsDir() && depth < filestore.MaxSubfolderDep-1:
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
