// Package brokerd is what atelier-broker runs on mello: the broker with its
// Prometheus metrics and the instructor dashboard mounted on its HTTP
// server, and the file store it keeps participants' files in. The main
// and the in-process stack both build it here, so they cannot drift
// apart.
package brokerd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/dashboard"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/atelier-run/atelier/pkg/metrics"
	"github.com/atelier-run/atelier/pkg/registry"
)

// DefaultStopTimeout bounds Run's stop once its context ends.
const DefaultStopTimeout = 10 * time.Second

// Config configures a Daemon: the broker, and what differs from the
// defaults of its companions. The daemon fills in what it wires itself
// (the registry, the store, the observer, the logger of the companions).
type Config struct {
	Broker broker.Config
	// Store chooses the file store when Broker.Store is nil; its Layout
	// defaults to Broker.DataDir. The zero value is the disk store.
	Store     storeconfig.Config
	Metrics   metrics.Config
	Dashboard dashboard.Config
	// StopTimeout bounds how long Run waits for the stop once its
	// context ends. Default DefaultStopTimeout.
	StopTimeout time.Duration
}

// Daemon is a broker with metrics and dashboard.
type Daemon struct {
	Broker    *broker.Broker
	Metrics   *metrics.Metrics
	Dashboard *dashboard.Dashboard
}

// New builds a daemon: the data directory, the registry, the metrics, the
// file store (its traffic counted by the metrics), the broker (observed by
// them), and the dashboard and /metrics mounted on the broker's HTTP
// server. It starts nothing.
func New(c Config) (*Daemon, error) {
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
		sc := c.Store
		if sc.Layout.Root == "" {
			sc.Layout = layout
		}
		if cfg.Store, err = storeconfig.New(sc); err != nil {
			return nil, fmt.Errorf("brokerd: file store: %w", err)
		}
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
	return &Daemon{Broker: b, Metrics: met, Dashboard: dash}, nil
}

// Start starts the broker, then the dashboard's watchers on its
// connection. A dashboard that fails to start stops the broker again.
func (d *Daemon) Start(ctx context.Context) error {
	if err := d.Broker.Start(ctx); err != nil {
		return err
	}
	if err := d.Dashboard.Start(ctx); err != nil {
		return errors.Join(fmt.Errorf("brokerd: dashboard: %w", err), d.Broker.Stop(context.WithoutCancel(ctx)))
	}
	return nil
}

// Stop stops the dashboard first (its open event streams would hold up
// the HTTP shutdown), then the broker, each draining within ctx.
func (d *Daemon) Stop(ctx context.Context) error {
	return errors.Join(d.Dashboard.Stop(ctx), d.Broker.Stop(ctx))
}

// Run builds and starts a daemon, blocks until ctx is done, then stops it
// within c.StopTimeout.
func Run(ctx context.Context, c Config) error {
	d, err := New(c)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmp.Or(c.StopTimeout, DefaultStopTimeout))
	defer cancel()
	return d.Stop(stopCtx)
}
