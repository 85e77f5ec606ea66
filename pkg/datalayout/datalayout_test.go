package datalayout_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/datalayout"
)

func TestValidUserID(t *testing.T) {
	t.Parallel()

	for _, id := range []string{"user007", "instructor", "a", "0", "a-b_c", "_x", strings.Repeat("a", 64)} {
		require.NoError(t, datalayout.ValidUserID(id), id)
	}
	for _, id := range []string{
		"", "-user", ".user", "..", ".", "User", "user/007", `user\007`, "user 7",
		"user\x00", "usér", "a.b", strings.Repeat("a", 65), "user*", "user>",
	} {
		err := datalayout.ValidUserID(id)
		require.Error(t, err, id)
		require.True(t, errors.Is(err, datalayout.ErrInvalidUserID), id)
	}
}

func TestPaths(t *testing.T) {
	t.Parallel()

	l := datalayout.New("/data")
	require.Equal(t, "/data/shared/models", l.ModelsDir())
	require.Equal(t, "/data/shared/workflows", l.WorkflowsDir())
	require.Equal(t, "/data/instances", l.InstancesDir())
	require.Equal(t, "/data/instances/user007", l.InstanceDir("user007"))
	require.Equal(t, "/data/instances/user007/user", l.UserDir("user007"))
	require.Equal(t, "/data/instances/user007/custom_nodes", l.CustomNodesDir("user007"))
	require.Equal(t, "/data/instances/user007/input", l.InputDir("user007"))
	require.Equal(t, "/data/instances/user007/output", l.OutputDir("user007"))
	require.Equal(t, "/data/instances/user007/temp", l.TempDir("user007"))
	require.Equal(t, "/data/meta", l.MetaDir())
	require.Equal(t, "/data/meta/instance-registry.json", l.RegistryPath())
	require.Equal(t, "/data/meta/backup-snapshots", l.BackupSnapshotsDir())
	require.Equal(t, "/data/nats", l.NATSStoreDir())
}

func TestEnsure(t *testing.T) {
	t.Parallel()

	l := datalayout.New(filepath.Join(t.TempDir(), "data"))
	require.NoError(t, l.Ensure())
	require.NoError(t, l.Ensure(), "idempotent")
	for _, d := range []string{l.ModelsDir(), l.WorkflowsDir(), l.InstancesDir(), l.MetaDir(), l.BackupSnapshotsDir(), l.NATSStoreDir()} {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		require.True(t, fi.IsDir(), d)
	}
	fi, err := os.Stat(l.MetaDir())
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	require.Error(t, datalayout.Layout{}.Ensure())
}

func TestEnsureInstance(t *testing.T) {
	t.Parallel()

	l := datalayout.New(t.TempDir())
	require.NoError(t, l.EnsureInstance("user007"))
	require.NoError(t, l.EnsureInstance("user007"), "idempotent")
	for _, d := range []string{l.UserDir("user007"), l.CustomNodesDir("user007"), l.InputDir("user007"), l.OutputDir("user007"), l.TempDir("user007")} {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		require.True(t, fi.IsDir(), d)
	}

	err := l.EnsureInstance("../evil")
	require.ErrorIs(t, err, datalayout.ErrInvalidUserID)

	// A symlinked instance directory is refused rather than followed.
	target := t.TempDir()
	require.NoError(t, os.Symlink(target, l.InstanceDir("user008")))
	require.Error(t, l.EnsureInstance("user008"))
	entries, err := os.ReadDir(target)
	require.NoError(t, err)
	require.Empty(t, entries)

	// So is a symlinked subdirectory.
	require.NoError(t, os.MkdirAll(l.InstanceDir("user009"), 0o750))
	require.NoError(t, os.Symlink(target, filepath.Join(l.InstanceDir("user009"), "output")))
	require.Error(t, l.EnsureInstance("user009"))
}
