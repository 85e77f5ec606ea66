package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/registry"
)

// demoPassword returns the demo password, made once per data directory.
func demoPassword(layout datalayout.Layout) (string, error) {
	path := filepath.Join(layout.MetaDir(), "demo-password")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 9)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	pw := "demo-" + hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write demo password: %w", err)
	}
	return pw, nil
}

// demoUsers creates user001–user004 and an instructor, once.
func demoUsers(ctx context.Context, layout datalayout.Layout, password string) error {
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath()})
	if err != nil {
		return err
	}
	users := []registry.User{{ID: "instructor", DisplayName: "Instructor", Role: registry.RoleInstructor}}
	for i := 1; i <= 4; i++ {
		users = append(users, registry.User{ID: fmt.Sprintf("user%03d", i), DisplayName: fmt.Sprintf("Participant %d", i), Role: registry.RoleParticipant})
	}
	for _, u := range users {
		if _, err := reg.Create(ctx, u, password); err != nil && !errors.Is(err, registry.ErrUserExists) {
			return fmt.Errorf("create demo user %s: %w", u.ID, err)
		}
		if err := layout.EnsureInstance(u.ID); err != nil {
			return err
		}
	}
	return nil
}
