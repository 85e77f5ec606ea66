// Package brokerd is what atelier-broker runs on mello: the broker with its
// Prometheus metrics and the instructor dashboard mounted on its HTTP
// server. The main and the in-process stack both start it here, so they
// cannot drift apart.
package brokerd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/dashboard"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/metrics"
	"github.com/atelier-run/atelier/pkg/registry"
)

// Daemon is a running broker with metrics and dashboard.
type Daemon struct {
	Broker    *broker.Broker
	Metrics   *metrics.Metrics
	Dashboard *dashboard.Dashboard
}

// Config configures a Daemon: the broker, and what differs from the
// defaults of its companions. The daemon fills in what it wires itself
// (the data directory, the registry, the store, the logger).
type Config struct {
	Broker    broker.Config
	Metrics   metrics.Config
	Dashboard dashboard.Config
}

// Start starts the broker (cfg) with its companions at their defaults.
func Start(ctx context.Context, cfg broker.Config) (*Daemon, error) {
	return StartConfig(ctx, Config{Broker: cfg})
}

// StartConfig starts the broker, mounts /metrics and /dashboard/, and
// starts the dashboard's watchers. Metrics observe the broker's jobs and
// agents and count the file store's traffic.
func StartConfig(ctx context.Context, c Config) (*Daemon, error) {
	cfg := c.Broker
	layout := datalayout.New(cfg.DataDir)
	if err := layout.Ensure(); err != nil {
		return nil, fmt.Errorf("brokerd: data dir: %w", err)
	}
	log := cfg.Logger
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath(), Logger: &log})
	if err != nil {
		return nil, fmt.Errorf("brokerd: registry: %w", err)
	}
	mc := c.Metrics
	mc.DataDir, mc.Logger = cfg.DataDir, cfg.Logger
	met, err := metrics.New(mc)
	if err != nil {
		return nil, fmt.Errorf("brokerd: metrics: %w", err)
	}
	cfg.Observer = met
	if cfg.Store == nil {
		cfg.Store = diskstore.New(layout)
	}
	cfg.Store = met.CountTransfers(cfg.Store)
	b, err := broker.New(cfg)
	if err != nil {
		return nil, err
	}
	dc := c.Dashboard
	dc.Registry, dc.Store, dc.Logger = reg, b.Store(), cfg.Logger
	dash, err := dashboard.Mount(b, dc, met)
	if err != nil {
		return nil, fmt.Errorf("brokerd: dashboard: %w", err)
	}
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	if err := dash.Start(ctx); err != nil {
		_ = b.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("brokerd: dashboard: %w", err)
	}
	return &Daemon{Broker: b, Metrics: met, Dashboard: dash}, nil
}

// Stop stops the dashboard first (its open event streams would hold up
// the HTTP shutdown), then the broker.
func (d *Daemon) Stop(ctx context.Context) error {
	return errors.Join(d.Dashboard.Stop(ctx), d.Broker.Stop(ctx))
}

// Run starts a daemon and blocks until ctx is done, then stops it.
func Run(ctx context.Context, cfg broker.Config) error {
	d, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.Stop(stopCtx)
}
