// Package datalayout names the paths of Atelier's data directory on mello.
//
// Every component that touches the data directory (broker, proxy, admin
// commands, backups, migrations) goes through a Layout so that the tree below
// is spelled in exactly one place:
//
//	data/
//	  shared/models/               read-only, shared model manifests
//	  shared/workflows/            instructor templates, read-only to everyone
//	  instances/<user>/            one per participant (instance id = user id)
//	    user/                      ComfyUI user dir (comfyui.db, settings, workflows)
//	    custom_nodes/              the participant's custom nodes
//	    input/  output/  temp/     the participant's files (see pkg/filestore)
//	  meta/instance-registry.json  users and instances (see pkg/registry)
//	  meta/backup-snapshots/
//	  nats/                        JetStream store of the embedded NATS server
package datalayout

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Names of the directories and files below Root. They are exported so that
// code which must work relative to a directory (an os.Root, a container mount,
// a backup key prefix) uses the same spelling as Layout.
const (
	SharedDirName          = "shared"
	ModelsDirName          = "models"
	WorkflowsDirName       = "workflows"
	InstancesDirName       = "instances"
	UserDirName            = "user"
	CustomNodesDirName     = "custom_nodes"
	InputDirName           = "input"
	OutputDirName          = "output"
	TempDirName            = "temp"
	MetaDirName            = "meta"
	RegistryFileName       = "instance-registry.json"
	BackupSnapshotsDirName = "backup-snapshots"
	NATSDirName            = "nats"
)

// Permissions of the directories Ensure and EnsureInstance create. meta/ and
// nats/ hold password hashes and job state, so only the owner may read them;
// instance directories are group-readable because per-user ComfyUI containers
// may run under a shared group.
const (
	dirPerm        os.FileMode = 0o750
	privateDirPerm os.FileMode = 0o700
)

// ErrInvalidUserID is returned by ValidUserID (and everything that validates a
// user id with it) for an id that must not become a path component.
var ErrInvalidUserID = errors.New("invalid user id")

// MaxUserIDLen is the longest accepted user id.
const MaxUserIDLen = 64

// ValidUserID reports whether id can name a user and its instance directory:
// 1–64 characters out of lowercase ASCII letters, digits, '-' and '_', not
// starting with '-'. The character set excludes '.', '/', '\\' and NUL, so a
// valid id is always a single, non-special path component (and a valid NATS
// subject token).
func ValidUserID(id string) error {
	if len(id) == 0 || len(id) > MaxUserIDLen {
		return fmt.Errorf("%w: %q: length must be 1..%d", ErrInvalidUserID, id, MaxUserIDLen)
	}
	if id[0] == '-' {
		return fmt.Errorf("%w: %q: must not start with '-'", ErrInvalidUserID, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return fmt.Errorf("%w: %q: only a-z, 0-9, '-' and '_' are allowed", ErrInvalidUserID, id)
		}
	}
	return nil
}

// DefaultRoot is the data directory of the mello binaries unless --data
// (ATELIER_DATA) says otherwise: ./data, beside where they run.
const DefaultRoot = "./data"

// Layout locates the data directory. The zero value is not usable; Root must
// be set (relative roots are allowed and resolved against the working
// directory by the operating system).
//
// The per-user path methods do not validate user: they are plain path
// builders. Validate ids coming from outside with ValidUserID first (Ensure
// methods and pkg/filestore do).
type Layout struct {
	// Root is the data directory, e.g. "/srv/atelier/data".
	Root string
}

// New returns a Layout rooted at root.
func New(root string) Layout { return Layout{Root: root} }

// SharedDir is data/shared.
func (l Layout) SharedDir() string { return filepath.Join(l.Root, SharedDirName) }

// ModelsDir is data/shared/models.
func (l Layout) ModelsDir() string { return filepath.Join(l.Root, SharedDirName, ModelsDirName) }

// WorkflowsDir is data/shared/workflows.
func (l Layout) WorkflowsDir() string {
	return filepath.Join(l.Root, SharedDirName, WorkflowsDirName)
}

// InstancesDir is data/instances.
func (l Layout) InstancesDir() string { return filepath.Join(l.Root, InstancesDirName) }

// InstanceDir is data/instances/<user>.
func (l Layout) InstanceDir(user string) string {
	return filepath.Join(l.Root, InstancesDirName, user)
}

// UserDir is data/instances/<user>/user, ComfyUI's --user-directory.
func (l Layout) UserDir(user string) string {
	return filepath.Join(l.InstanceDir(user), UserDirName)
}

// CustomNodesDir is data/instances/<user>/custom_nodes.
func (l Layout) CustomNodesDir(user string) string {
	return filepath.Join(l.InstanceDir(user), CustomNodesDirName)
}

// InputDir is data/instances/<user>/input.
func (l Layout) InputDir(user string) string {
	return filepath.Join(l.InstanceDir(user), InputDirName)
}

// OutputDir is data/instances/<user>/output.
func (l Layout) OutputDir(user string) string {
	return filepath.Join(l.InstanceDir(user), OutputDirName)
}

// TempDir is data/instances/<user>/temp.
func (l Layout) TempDir(user string) string {
	return filepath.Join(l.InstanceDir(user), TempDirName)
}

// MetaDir is data/meta.
func (l Layout) MetaDir() string { return filepath.Join(l.Root, MetaDirName) }

// RegistryPath is data/meta/instance-registry.json.
func (l Layout) RegistryPath() string {
	return filepath.Join(l.Root, MetaDirName, RegistryFileName)
}

// BackupSnapshotsDir is data/meta/backup-snapshots.
func (l Layout) BackupSnapshotsDir() string {
	return filepath.Join(l.Root, MetaDirName, BackupSnapshotsDirName)
}

// NATSStoreDir is data/nats, the JetStream StoreDir of the embedded server.
// It must be set explicitly: an empty StoreDir silently falls back to
// $TMPDIR/nats/jetstream (see nats-notes.md).
func (l Layout) NATSStoreDir() string { return filepath.Join(l.Root, NATSDirName) }

// InstanceSubdirs lists the directories EnsureInstance creates below
// InstanceDir, in creation order.
func InstanceSubdirs() []string {
	return []string{UserDirName, CustomNodesDirName, InputDirName, OutputDirName, TempDirName}
}

// Ensure creates the shared, instances, meta and nats directories. It is
// idempotent and leaves existing directories (and their modes) alone.
func (l Layout) Ensure() error {
	if l.Root == "" {
		return errors.New("datalayout: empty root")
	}
	dirs := []struct {
		path string
		perm os.FileMode
	}{
		{l.ModelsDir(), dirPerm},
		{l.WorkflowsDir(), dirPerm},
		{l.InstancesDir(), dirPerm},
		{l.MetaDir(), privateDirPerm},
		{l.BackupSnapshotsDir(), privateDirPerm},
		{l.NATSStoreDir(), privateDirPerm},
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d.path, d.perm); err != nil {
			return fmt.Errorf("datalayout: create %s: %w", d.path, err)
		}
	}
	return nil
}

// EnsureInstance validates user and creates data/instances/<user> with its
// user/, custom_nodes/, input/, output/ and temp/ directories. It is
// idempotent. It refuses an instance directory that is a symlink, so that a
// planted link cannot redirect a participant's files elsewhere.
func (l Layout) EnsureInstance(user string) error {
	if err := ValidUserID(user); err != nil {
		return err
	}
	if l.Root == "" {
		return errors.New("datalayout: empty root")
	}
	if err := os.MkdirAll(l.InstancesDir(), dirPerm); err != nil {
		return fmt.Errorf("datalayout: create %s: %w", l.InstancesDir(), err)
	}
	inst := l.InstanceDir(user)
	if err := mkdirNoFollow(inst); err != nil {
		return err
	}
	for _, sub := range InstanceSubdirs() {
		if err := mkdirNoFollow(filepath.Join(inst, sub)); err != nil {
			return err
		}
	}
	return nil
}

// mkdirNoFollow creates dir if missing and fails if it exists as anything but
// a real directory.
func mkdirNoFollow(dir string) error {
	fi, err := os.Lstat(dir)
	switch {
	case err == nil:
		if !fi.IsDir() {
			return fmt.Errorf("datalayout: %s exists and is not a directory (mode %s)", dir, fi.Mode())
		}
		return nil
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(dir, dirPerm); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("datalayout: create %s: %w", dir, err)
		}
		return nil
	default:
		return fmt.Errorf("datalayout: stat %s: %w", dir, err)
	}
}
