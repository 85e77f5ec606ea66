package main

import (
	"github.com/spf13/cobra"

	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/atelier-run/atelier/pkg/logging"
	"github.com/atelier-run/atelier/pkg/proxy"
	"github.com/atelier-run/atelier/pkg/wire"
)

// newRoot is atelier-proxy: flags → proxy.RunConfig → proxy.Run. It takes
// no arguments and has no subcommands.
func newRoot() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "atelier-proxy [flags]",
		Short: "The participants' ComfyUI API on mello",
		Long: `atelier-proxy speaks the ComfyUI API to participants under /<user>/: it
authenticates them against the registry, queues their prompts on the broker
and streams progress, history and outputs back.`,
	}
	fs := cmd.Flags()
	listen := cli.String(fs, "listen", "ATELIER_PROXY_LISTEN", proxy.DefaultAddr, "HTTP listen address for participants")
	dataDir := cli.String(fs, "data", "ATELIER_DATA", datalayout.DefaultRoot, "mello data directory (registry, participants' files)")
	natsURL := cli.String(fs, "nats-url", "ATELIER_NATS_URL", wire.DefaultNATSURL, "broker's NATS URL")
	natsUser := cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user")
	natsPass := cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password")
	uiUpstream := cli.String(fs, "ui-upstream", "ATELIER_UI_UPSTREAM", "",
		"URL template of each participant's own ComfyUI UI, e.g. 'http://127.0.0.1:{port}' ({user}: user id, {port}: the registry's port); a participant's registry ui_upstream overrides it")
	store := storeconfig.Flags(fs)
	quotaGB := cli.Int(fs, "quota-gb", "ATELIER_QUOTA_GB", 0, "each participant's disk quota on mello in GiB, checked on uploads (0: none; the registry's quotas.storage_bytes overrides)")
	logger := cli.LogFlags(fs, "atelier-proxy", logging.DefaultFormat)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		log, err := logger()
		if err != nil {
			return err
		}
		return proxy.Run(cmd.Context(), proxy.RunConfig{
			Proxy:   proxy.Config{Addr: *listen, Logger: log},
			DataDir: *dataDir, NATSURL: *natsURL, NATSUser: *natsUser, NATSPassword: *natsPass,
			Store: store(), QuotaBytes: int64(*quotaGB) << 30, UIUpstream: *uiUpstream,
		})
	}
	return cmd
}
