package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/cli"
)

// newPrepare is `atelier-agent prepare`: it creates the scratch layout
// (inputs/<user>/, outputs/<user>/, temp/) and, with --comfy-dir, links
// the checkout's input/ and output/ into it. Idempotent: the set-up script
// runs it on every boot.
func newPrepare() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prepare [flags]",
		Short: "Create the scratch layout and the ComfyUI checkout's links into it",
	}
	scratch := cli.String(cmd.Flags(), "scratch", "ATELIER_SCRATCH", agent.DefaultScratchRoot, "scratch root")
	comfyDir := cli.String(cmd.Flags(), "comfy-dir", "ATELIER_COMFY_DIR", "", "ComfyUI checkout whose input/ and output/ become links into the scratch layout")
	users := cli.String(cmd.Flags(), "users", "ATELIER_USERS", "", "comma-separated users whose folders to create now")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var us []string
		for _, u := range strings.Split(*users, ",") {
			if u = strings.TrimSpace(u); u != "" {
				us = append(us, u)
			}
		}
		sc := agent.Scratch{Root: *scratch}
		if err := sc.Prepare(agent.PrepareOptions{Users: us, ComfyUIDir: *comfyDir}); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "scratch ready: %s %s %s\n", sc.Inputs(), sc.Outputs(), sc.Temp())
		return nil
	}
	return cmd
}
