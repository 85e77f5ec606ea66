package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
)

// registryTimeout bounds a registry change (its file lock).
const registryTimeout = time.Minute

// newUserCommand is `user add|list|passwd`: the participants registry in
// the data directory, changed in place (the broker and proxy re-read it).
func newUserCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Add, list and set the password of participants and instructors", GroupID: "users"}
	cmd.AddCommand(newUserAddCommand(), newUserListCommand(), newUserPasswdCommand())
	return cmd
}

func newUserAddCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "add --id ID --password PASSWORD [flags]",
		Short:   "Add a participant or instructor",
		Example: `  atelier-broker user add --id user005 --name "Ada" --password '…' [--role instructor] [--pool default]`,
	}
	fs := cmd.Flags()
	open := registryFlag(fs)
	id := fs.String("id", "", "user id, e.g. user007")
	name := fs.String("name", "", "display name")
	role := fs.String("role", string(registry.RoleParticipant), "participant, instructor or admin")
	pool := fs.String("pool", wire.DefaultPool, "GPU pool")
	password := passwordFlag(fs)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		layout, reg, err := open()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), registryTimeout)
		defer cancel()
		u, err := reg.Create(ctx, registry.User{ID: *id, DisplayName: *name, Role: registry.Role(*role), Pool: *pool}, *password)
		if err != nil {
			return err
		}
		if err := layout.EnsureInstance(u.ID); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "added %s (%s)\n", u.ID, u.Role)
		return nil
	}
	return cmd
}

func newUserListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list [flags]", Short: "List users"}
	open := registryFlag(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		_, reg, err := open()
		if err != nil {
			return err
		}
		users, err := reg.List()
		if err != nil {
			return err
		}
		writeUsers(cmd.OutOrStdout(), users)
		return nil
	}
	return cmd
}

func newUserPasswdCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "passwd --id ID --password PASSWORD [flags]", Short: "Set a user's password"}
	fs := cmd.Flags()
	open := registryFlag(fs)
	id := fs.String("id", "", "user id")
	password := passwordFlag(fs)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		_, reg, err := open()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), registryTimeout)
		defer cancel()
		if err := reg.SetPassword(ctx, *id, *password); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "password of %s set\n", *id)
		return nil
	}
	return cmd
}

// registryFlag defines --data and returns a function that opens the
// registry in that data directory once the flags are parsed.
func registryFlag(fs *pflag.FlagSet) func() (datalayout.Layout, *registry.Registry, error) {
	dataDir := cli.String(fs, "data", "ATELIER_DATA", datalayout.DefaultRoot, "data directory")
	return func() (datalayout.Layout, *registry.Registry, error) {
		layout := datalayout.New(*dataDir)
		if err := layout.Ensure(); err != nil {
			return layout, nil, err
		}
		reg, err := registry.Open(registry.Config{Path: layout.RegistryPath()})
		return layout, reg, err
	}
}

func passwordFlag(fs *pflag.FlagSet) *string {
	return cli.String(fs, "password", "ATELIER_USER_PASSWORD", "", "password")
}

func writeUsers(w io.Writer, users []registry.User) {
	fmt.Fprintf(w, "%-20s %-12s %-10s %-10s %s\n", "ID", "ROLE", "STATUS", "POOL", "NAME")
	for _, u := range users {
		fmt.Fprintf(w, "%-20s %-12s %-10s %-10s %s\n", u.ID, u.Role, u.Status, u.Pool, u.DisplayName)
	}
}
