package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// fileVersion is the format version written to the registry file.
const fileVersion = 1

// registryFile is the on-disk shape of instance-registry.json.
type registryFile struct {
	Version   int    `json:"version"`
	Instances []User `json:"instances"`
}

// refreshLocked reloads the file if it changed since it was last read or
// written. A rename-based write always yields a new inode, so comparing the
// file identity plus size and mtime catches every change made through this
// package, and in-place edits by hand in all but pathological cases.
func (r *Registry) refreshLocked() error {
	fi, err := os.Stat(r.cfg.Path)
	if errors.Is(err, fs.ErrNotExist) {
		if r.loaded != nil {
			r.cfg.Logger.Warn().Str("path", r.cfg.Path).Msg("registry file disappeared; registry is empty")
		}
		r.users, r.loaded = map[string]User{}, nil
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: stat %s: %w", r.cfg.Path, err)
	}
	if r.loaded != nil && os.SameFile(fi, r.loaded) && fi.ModTime().Equal(r.loaded.ModTime()) && fi.Size() == r.loaded.Size() {
		return nil
	}
	data, err := os.ReadFile(r.cfg.Path)
	if err != nil {
		return fmt.Errorf("registry: read %s: %w", r.cfg.Path, err)
	}
	var f registryFile
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("registry: parse %s: %w", r.cfg.Path, err)
	}
	if f.Version > fileVersion {
		return fmt.Errorf("registry: %s has format version %d, this binary knows up to %d", r.cfg.Path, f.Version, fileVersion)
	}
	users := make(map[string]User, len(f.Instances))
	for _, u := range f.Instances {
		if _, dup := users[u.ID]; dup {
			return fmt.Errorf("registry: %s: duplicate id %q", r.cfg.Path, u.ID)
		}
		users[u.ID] = u
	}
	if r.loaded != nil {
		r.cfg.Logger.Info().Str("path", r.cfg.Path).Int("users", len(users)).Msg("registry changed on disk; reloaded")
	}
	r.users, r.loaded = users, fi
	return nil
}

// saveLocked writes users atomically: a temporary file in the same
// directory, fsynced, renamed over the registry, then the directory fsynced.
// A crash leaves either the old or the new file, never a torn one.
func (r *Registry) saveLocked(users map[string]User) error {
	f := registryFile{Version: fileVersion, Instances: make([]User, 0, len(users))}
	for _, u := range users {
		f.Instances = append(f.Instances, u)
	}
	sort.Slice(f.Instances, func(i, j int) bool { return f.Instances[i].ID < f.Instances[j].ID })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("registry: encode: %w", err)
	}
	data = append(data, '\n')

	dir := filepath.Dir(r.cfg.Path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(r.cfg.Path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("registry: write: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("registry: write: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("registry: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("registry: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("registry: write: %w", err)
	}
	if err := os.Rename(tmp.Name(), r.cfg.Path); err != nil {
		return fmt.Errorf("registry: rename: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	fi, err := os.Stat(r.cfg.Path)
	if err != nil {
		return fmt.Errorf("registry: stat after write: %w", err)
	}
	r.loaded = fi
	return nil
}

// userFields lists the JSON keys of User's own fields; everything else in an
// entry goes to Extra.
var userFields = map[string]bool{
	"id": true, "display_name": true, "role": true, "password_hash": true, "status": true,
	"pool": true, "created_at": true, "updated_at": true, "port": true, "image": true, "quotas": true, "ui_upstream": true,
}

type userAlias User

// MarshalJSON writes the known fields and then the Extra ones.
func (u User) MarshalJSON() ([]byte, error) {
	known, err := json.Marshal(userAlias(u))
	if err != nil || len(u.Extra) == 0 {
		return known, err
	}
	m := map[string]json.RawMessage{}
	if err := json.Unmarshal(known, &m); err != nil {
		return nil, err
	}
	for k, v := range u.Extra {
		if !userFields[k] {
			m[k] = v
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads the known fields and keeps the others in Extra.
func (u *User) UnmarshalJSON(data []byte) error {
	var a userAlias
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	for k := range m {
		if userFields[k] {
			delete(m, k)
		}
	}
	*u = User(a)
	if len(m) > 0 {
		u.Extra = m
	}
	return nil
}
