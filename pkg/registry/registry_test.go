package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/atelier-run/atelier/pkg/registry"
)

type testBundle struct {
	ctx  context.Context
	path string
	reg  *registry.Registry
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meta", "instance-registry.json")
	reg, err := registry.Open(registry.Config{Path: path, BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	return &testBundle{ctx: context.Background(), path: path, reg: reg}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := registry.Open(registry.Config{})
	require.Error(t, err)
	_, err = registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "r.json"), BcryptCost: 99})
	require.Error(t, err)
}

func TestCreateGetListDelete(t *testing.T) {
	t.Parallel()
	b := setup(t)

	list, err := b.reg.List()
	require.NoError(t, err)
	require.Empty(t, list, "missing file is an empty registry")

	u, err := b.reg.Create(b.ctx, registry.User{ID: "user007", DisplayName: "Ada", PasswordHash: "ignored"}, "s3cret")
	require.NoError(t, err)
	require.Equal(t, registry.RoleParticipant, u.Role)
	require.Equal(t, registry.StatusActive, u.Status)
	require.Equal(t, registry.DefaultPool, u.Pool)
	require.False(t, u.CreatedAt.IsZero())
	require.True(t, strings.HasPrefix(u.PasswordHash, "$2"), "bcrypt hash")

	_, err = b.reg.Create(b.ctx, registry.User{ID: "user007"}, "x")
	require.ErrorIs(t, err, registry.ErrUserExists)
	_, err = b.reg.Create(b.ctx, registry.User{ID: "../x"}, "x")
	require.ErrorIs(t, err, registry.ErrInvalidUser)
	_, err = b.reg.Create(b.ctx, registry.User{ID: "x", Role: "root"}, "x")
	require.ErrorIs(t, err, registry.ErrInvalidUser)

	_, err = b.reg.Create(b.ctx, registry.User{ID: "instructor", Role: registry.RoleInstructor, Pool: "big", Port: 8201, Quotas: &registry.Quotas{MaxQueued: 5}}, "teach")
	require.NoError(t, err)

	got, err := b.reg.Get("instructor")
	require.NoError(t, err)
	require.Equal(t, registry.RoleInstructor, got.Role)
	require.Equal(t, "big", got.Pool)
	require.Equal(t, 8201, got.Port)
	require.Equal(t, 5, got.Quotas.MaxQueued)
	got.Quotas.MaxQueued = 99 // a copy: must not leak into the registry
	again, _ := b.reg.Get("instructor")
	require.Equal(t, 5, again.Quotas.MaxQueued)

	list, err = b.reg.List()
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "instructor", list[0].ID)
	require.Equal(t, "user007", list[1].ID)

	require.NoError(t, b.reg.Delete(b.ctx, "user007"))
	require.ErrorIs(t, b.reg.Delete(b.ctx, "user007"), registry.ErrUnknownUser)
	_, err = b.reg.Get("user007")
	require.ErrorIs(t, err, registry.ErrUnknownUser)
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.reg.Create(b.ctx, registry.User{ID: "user007"}, "s3cret")
	require.NoError(t, err)
	_, err = b.reg.Create(b.ctx, registry.User{ID: "nopass"}, "")
	require.NoError(t, err)

	u, err := b.reg.Authenticate("user007", "s3cret")
	require.NoError(t, err)
	require.Equal(t, "user007", u.ID)

	_, err = b.reg.Authenticate("user007", "wrong")
	require.ErrorIs(t, err, registry.ErrBadPassword)
	_, err = b.reg.Authenticate("ghost", "s3cret")
	require.ErrorIs(t, err, registry.ErrUnknownUser)
	_, err = b.reg.Authenticate("nopass", "")
	require.ErrorIs(t, err, registry.ErrBadPassword, "a user without a password cannot log in")

	require.NoError(t, b.reg.SetPassword(b.ctx, "user007", "n3w"))
	_, err = b.reg.Authenticate("user007", "s3cret")
	require.ErrorIs(t, err, registry.ErrBadPassword)
	_, err = b.reg.Authenticate("user007", "n3w")
	require.NoError(t, err)
	require.ErrorIs(t, b.reg.SetPassword(b.ctx, "ghost", "x"), registry.ErrUnknownUser)
	require.ErrorIs(t, b.reg.SetPassword(b.ctx, "user007", ""), registry.ErrInvalidPassword)
	require.ErrorIs(t, b.reg.SetPassword(b.ctx, "user007", strings.Repeat("x", 73)), registry.ErrInvalidPassword)

	_, err = b.reg.Update(b.ctx, "user007", func(u *registry.User) error {
		u.Status = registry.StatusDisabled
		u.PasswordHash = "tampered" // ignored: Update keeps the hash
		return nil
	})
	require.NoError(t, err)
	_, err = b.reg.Authenticate("user007", "n3w")
	require.ErrorIs(t, err, registry.ErrUserDisabled)
}

func TestFileFormatAndPermissions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.reg.Create(b.ctx, registry.User{ID: "user007", DisplayName: "Ada"}, "s3cret")
	require.NoError(t, err)

	fi, err := os.Stat(b.path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	data, err := os.ReadFile(b.path)
	require.NoError(t, err)
	require.NotContains(t, string(data), "s3cret")
	var f struct {
		Version   int              `json:"version"`
		Instances []map[string]any `json:"instances"`
	}
	require.NoError(t, json.Unmarshal(data, &f))
	require.Equal(t, 1, f.Version)
	require.Len(t, f.Instances, 1)
	require.Equal(t, "user007", f.Instances[0]["id"])
	require.Equal(t, "participant", f.Instances[0]["role"])
	require.Equal(t, "default", f.Instances[0]["pool"])

	entries, err := os.ReadDir(filepath.Dir(b.path))
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.HasSuffix(e.Name(), ".tmp"), "leftover temp file %s", e.Name())
	}
}

func TestReloadsChangesFromAnotherProcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.reg.Create(b.ctx, registry.User{ID: "user001"}, "one")
	require.NoError(t, err)

	// The CLI opens its own Registry on the same file.
	cli, err := registry.Open(registry.Config{Path: b.path, BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	_, err = cli.Create(b.ctx, registry.User{ID: "user002"}, "two")
	require.NoError(t, err)

	_, err = b.reg.Authenticate("user002", "two")
	require.NoError(t, err, "the running proxy sees the new user")

	// Both sides' writes survive: no lost update.
	_, err = b.reg.Create(b.ctx, registry.User{ID: "user003"}, "three")
	require.NoError(t, err)
	list, err := cli.List()
	require.NoError(t, err)
	require.Len(t, list, 3)

	_, err = cli.Create(b.ctx, registry.User{ID: "user003"}, "x")
	require.ErrorIs(t, err, registry.ErrUserExists, "conflict check sees the other process's user")
}

func TestUnknownFieldsPreserved(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, os.MkdirAll(filepath.Dir(b.path), 0o700))
	raw := `{"version":1,"instances":[{"id":"user007","role":"participant","status":"active","pool":"default","created_at":"2026-01-30T10:00:00Z","compose":{"cpus":2}}]}`
	require.NoError(t, os.WriteFile(b.path, []byte(raw), 0o600))

	require.NoError(t, b.reg.SetPassword(b.ctx, "user007", "pw"))
	data, err := os.ReadFile(b.path)
	require.NoError(t, err)
	require.Contains(t, string(data), `"compose"`)
	u, err := b.reg.Get("user007")
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 1, 30, 10, 0, 0, 0, time.UTC), u.CreatedAt.UTC())
}

func TestCorruptFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "r.json")
	require.NoError(t, os.WriteFile(path, []byte("{not json"), 0o600))
	_, err := registry.Open(registry.Config{Path: path, BcryptCost: bcrypt.MinCost})
	require.Error(t, err)
}

func TestConcurrentCreates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	other, err := registry.Open(registry.Config{Path: b.path, BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)

	var wg sync.WaitGroup
	for i := range 20 {
		reg := b.reg
		if i%2 == 1 {
			reg = other
		}
		wg.Go(func() {
			_, err := reg.Create(b.ctx, registry.User{ID: fmt.Sprintf("user%03d", i)}, "pw")
			require.NoError(t, err)
		})
	}
	wg.Wait()
	list, err := b.reg.List()
	require.NoError(t, err)
	require.Len(t, list, 20)
}

func TestCanceledContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(b.ctx)
	cancel()
	_, err := b.reg.Create(ctx, registry.User{ID: "user007"}, "pw")
	require.ErrorIs(t, err, context.Canceled)
}
