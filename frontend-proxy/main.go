// Command atelier-proxy speaks the ComfyUI API to participants: it
// authenticates them, queues their prompts on the broker and streams
// progress, history and outputs back.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/atelier-run/atelier/pkg/logging"
	"github.com/atelier-run/atelier/pkg/proxy"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/retention"
	"github.com/nats-io/nats.go"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "atelier-proxy:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := pflag.NewFlagSet("atelier-proxy", pflag.ExitOnError)
	var (
		listen     = cli.String(fs, "listen", "ATELIER_PROXY_LISTEN", "127.0.0.1:8190", "HTTP listen address for participants")
		dataDir    = cli.String(fs, "data", "ATELIER_DATA", "./data", "mello data directory (registry, participants' files)")
		natsURL    = cli.String(fs, "nats-url", "ATELIER_NATS_URL", "nats://127.0.0.1:4222", "broker's NATS URL")
		natsUser   = cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user")
		natsPass   = cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password")
		uiUpstream = cli.String(fs, "ui-upstream", "ATELIER_UI_UPSTREAM", "",
			"URL template of each participant's own ComfyUI UI, e.g. 'http://127.0.0.1:{port}' ({user}: user id, {port}: the registry's port); a participant's registry ui_upstream overrides it")
		storeOf   = storeconfig.Flags(fs)
		quotaGB   = cli.Int(fs, "quota-gb", "ATELIER_QUOTA_GB", 0, "each participant's disk quota on mello in GiB, checked on uploads (0: none; the registry's quotas.storage_bytes overrides)")
		logFormat = cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "json", "json or console")
		logLevel  = cli.String(fs, "log-level", "ATELIER_LOG_LEVEL", "info", "debug, info, warn, error")
	)
	_ = fs.Parse(os.Args[1:])
	cli.MustApplyEnv(fs)
	log := logging.Must(*logFormat, *logLevel, "atelier-proxy")

	layout := datalayout.New(*dataDir)
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath(), Logger: &log})
	if err != nil {
		return err
	}
	opts := []nats.Option{nats.Name("atelier-proxy"), nats.MaxReconnects(-1)}
	if *natsUser != "" {
		opts = append(opts, nats.UserInfo(*natsUser, *natsPass))
	}
	nc, err := nats.Connect(*natsURL, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", *natsURL, err)
	}
	defer nc.Close()

	up, err := proxy.NewUIUpstream(proxy.UIUpstreamConfig{Registry: reg, Template: *uiUpstream, Logger: log})
	if err != nil {
		return err
	}
	store, err := storeOf(layout)
	if err != nil {
		return err
	}
	quotas, err := retention.NewQuotas(retention.QuotaConfig{
		Store: store, DefaultLimit: int64(*quotaGB) << 30,
		Limit: func(user string) (int64, bool) {
			u, err := reg.Get(user)
			if err != nil || u.Quotas == nil || u.Quotas.StorageBytes <= 0 {
				return 0, false
			}
			return u.Quotas.StorageBytes, true
		},
	})
	if err != nil {
		return err
	}
	p, err := proxy.New(proxy.Config{
		Addr: *listen, Conn: nc, Registry: reg, Store: store, Quotas: quotas, Fallback: up, Logger: log,
		// Uploads wait on mello's data disk, not in a RAM-backed /tmp.
		SpoolDir: filepath.Join(layout.Root, "spool", "uploads"),
	})
	if err != nil {
		return err
	}
	ctx, cancel := cli.SignalContext()
	defer cancel()
	if err := p.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	return p.Stop(stopCtx)
}
