package proxy

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/retention"
	"github.com/atelier-run/atelier/pkg/wire"
)

// DefaultStopTimeout bounds Run's stop once its context ends.
const DefaultStopTimeout = 10 * time.Second

// RunConfig is what atelier-proxy runs: a Proxy and what Run builds for it
// from mello's data directory and the broker's NATS address.
type RunConfig struct {
	// Proxy configures the proxy. Run fills in Conn, Registry, Store,
	// Quotas and Fallback, and SpoolDir when empty (<data>/spool/uploads).
	Proxy Config
	// DataDir is mello's data directory (registry, participants' files).
	// Default datalayout.DefaultRoot.
	DataDir string
	// NATSURL is the broker's NATS (default wire.DefaultNATSURL);
	// NATSUser and NATSPassword authenticate to it.
	NATSURL, NATSUser, NATSPassword string
	// Store chooses the file store; its Layout defaults to DataDir.
	Store storeconfig.Config
	// QuotaBytes is each participant's disk quota on mello, checked on
	// uploads (0: none; a registry entry's quotas.storage_bytes
	// overrides it).
	QuotaBytes int64
	// UIUpstream is the URL template of each participant's own ComfyUI
	// UI (UIUpstreamConfig.Template).
	UIUpstream string
	// StopTimeout bounds the stop once ctx ends. Default
	// DefaultStopTimeout.
	StopTimeout time.Duration
}

// Run builds the proxy's registry, NATS connection, file store, quotas and
// UI upstream, serves until ctx ends, then stops within StopTimeout.
func Run(ctx context.Context, rc RunConfig) error {
	layout := datalayout.New(cmp.Or(rc.DataDir, datalayout.DefaultRoot))
	cfg := rc.Proxy
	log := cfg.Logger
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath(), Logger: &log})
	if err != nil {
		return err
	}
	natsURL := cmp.Or(rc.NATSURL, wire.DefaultNATSURL)
	opts := []nats.Option{nats.Name("atelier-proxy"), nats.MaxReconnects(-1)}
	if rc.NATSUser != "" {
		opts = append(opts, nats.UserInfo(rc.NATSUser, rc.NATSPassword))
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", natsURL, err)
	}
	defer nc.Close()
	if err := rc.wire(&cfg, layout, reg); err != nil {
		return err
	}
	cfg.Conn = nc
	p, err := New(cfg)
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmp.Or(rc.StopTimeout, DefaultStopTimeout))
	defer cancel()
	return p.Stop(stopCtx)
}

// wire fills cfg's registry, file store, quotas, UI upstream and spool
// directory.
func (rc RunConfig) wire(cfg *Config, layout datalayout.Layout, reg *registry.Registry) error {
	up, err := NewUIUpstream(UIUpstreamConfig{Registry: reg, Template: rc.UIUpstream, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	sc := rc.Store
	if sc.Layout.Root == "" {
		sc.Layout = layout
	}
	store, err := storeconfig.New(sc)
	if err != nil {
		return err
	}
	quotas, err := retention.NewQuotas(retention.QuotaConfig{
		Store: store, DefaultLimit: rc.QuotaBytes,
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
	cfg.Registry, cfg.Store, cfg.Quotas, cfg.Fallback = reg, store, quotas, up
	if cfg.SpoolDir == "" {
		// Uploads wait on mello's data disk, not in a RAM-backed /tmp.
		cfg.SpoolDir = filepath.Join(layout.Root, "spool", "uploads")
	}
	return nil
}
