// Package stack runs a whole Atelier in one process — broker with embedded
// NATS, proxy, one agent with simulated GPUs, and participants — on
// loopback ports. Benchmarks and integration tests use it; the end-to-end
// tests run the real binaries instead (see test/e2e).
package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/atelier-run/atelier/internal/backoff"
	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/agent/runtime/simulated"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerd"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/proxy"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/retention"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// Config configures a Stack.
type Config struct {
	// Dir holds the data directory and the simulators' folders.
	Dir string
	// Users are created as participants with Password.
	Users    []string
	Password string
	// GPUs is the number of simulated GPUs of the agent (default 2).
	GPUs int
	// StepDelay is the simulators' time per sampler step.
	StepDelay time.Duration
	// ConfigureSim adjusts each simulator (hooks, faults).
	ConfigureSim func(slot int, cfg *comfysim.Config)
	// QuotaBytes is each participant's disk quota on mello (0: none), for
	// the broker (outputs) and the proxy (uploads).
	QuotaBytes int64
	// UIFallback serves what the proxy does not answer itself (the
	// participants' ComfyUI UI upstream); nil: 404.
	UIFallback http.Handler
	// NewerErrors makes the proxy answer an unknown node class as newer
	// ComfyUI does (missing_node_type), whatever the pool's version.
	NewerErrors bool
	// Limits of the streams (default: wire defaults with memory storage).
	Limits wire.Limits
	Logger zerolog.Logger
}

// Stack is a running system.
type Stack struct {
	Broker   *broker.Broker
	Daemon   *brokerd.Daemon
	Proxy    *proxy.Proxy
	Agent    *agent.Agent
	Runtime  *simulated.Runtime
	Registry *registry.Registry
	Layout   datalayout.Layout

	proxyConn *nats.Conn
}

// Start starts the broker, the proxy and the agent, and waits until the
// agent's catalog reached the broker (prompts can be validated).
func Start(ctx context.Context, cfg Config) (*Stack, error) {
	if cfg.GPUs == 0 {
		cfg.GPUs = 2
	}
	if cfg.Limits == (wire.Limits{}) {
		cfg.Limits = wire.SmallLimits()
	}
	s := &Stack{Layout: datalayout.New(cfg.Dir + "/data")}
	for _, step := range []func(context.Context, Config) error{
		s.startBroker, s.addUsers, s.startProxy, s.startAgent, s.awaitCatalog,
	} {
		if err := step(ctx, cfg); err != nil {
			_ = s.Stop(context.Background())
			return nil, err
		}
	}
	return s, nil
}

func (s *Stack) startBroker(ctx context.Context, cfg Config) error {
	d, err := brokerd.New(brokerd.Config{Broker: broker.Config{
		DataDir: s.Layout.Root, NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Limits: cfg.Limits, TickInterval: 200 * time.Millisecond, QuotaBytes: cfg.QuotaBytes, Logger: cfg.Logger,
	}})
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	s.Daemon, s.Broker = d, d.Broker
	return nil
}

// addUsers creates the participants in the registry, each with an
// instance folder.
func (s *Stack) addUsers(ctx context.Context, cfg Config) error {
	var err error
	s.Registry, err = registry.Open(registry.Config{Path: s.Layout.RegistryPath(), BcryptCost: bcrypt.MinCost})
	if err != nil {
		return err
	}
	for _, u := range cfg.Users {
		if _, err := s.Registry.Create(ctx, registry.User{ID: u, Role: registry.RoleParticipant}, cfg.Password); err != nil {
			return fmt.Errorf("stack: create user %s: %w", u, err)
		}
		if err := s.Layout.EnsureInstance(u); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stack) startProxy(ctx context.Context, cfg Config) error {
	var err error
	s.proxyConn, err = nats.Connect(s.Broker.ClientURL())
	if err != nil {
		return err
	}
	store := diskstore.New(s.Layout)
	quotas, err := retention.NewQuotas(retention.QuotaConfig{Store: store, DefaultLimit: cfg.QuotaBytes})
	if err != nil {
		return err
	}
	p, err := proxy.New(proxy.Config{
		Addr: "127.0.0.1:0", Conn: s.proxyConn, Registry: s.Registry,
		Store: store, Quotas: quotas, Fallback: cfg.UIFallback, NewerErrors: cfg.NewerErrors, Logger: cfg.Logger,
		SpoolDir: s.Layout.Root + "/spool/uploads",
	})
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	s.Proxy = p
	return nil
}

func (s *Stack) startAgent(ctx context.Context, cfg Config) error {
	s.Runtime = &simulated.Runtime{
		GPUs: cfg.GPUs, Dir: cfg.Dir + "/sim", StepDelay: cfg.StepDelay,
		Configure: cfg.ConfigureSim, Logger: cfg.Logger,
	}
	a, err := agent.New(agent.Config{
		ID: "stack-agent", NATSURL: s.Broker.ClientURL(), Runtime: s.Runtime,
		HeartbeatInterval: 200 * time.Millisecond, RetryDelay: 500 * time.Millisecond, Logger: cfg.Logger,
	})
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	s.Agent = a
	return nil
}

// CatalogTimeout bounds Start's wait for the agent's first catalog.
const CatalogTimeout = 30 * time.Second

func (s *Stack) awaitCatalog(ctx context.Context, _ Config) error {
	ctx, cancel := context.WithTimeout(ctx, CatalogTimeout)
	defer cancel()
	for {
		st, err := s.Broker.Status(ctx)
		if err == nil && len(st.Agents) > 0 && st.Catalogs > 0 {
			return nil
		}
		if !backoff.Sleep(ctx, 20*time.Millisecond) {
			return fmt.Errorf("stack: the agent did not report its catalog within %s", CatalogTimeout)
		}
	}
}

// ProxyURL is the proxy's base URL.
func (s *Stack) ProxyURL() string { return s.Proxy.URL() }

// Stop stops the agent, the proxy and the broker (what Start started of
// them) and returns what went wrong stopping them.
func (s *Stack) Stop(ctx context.Context) error {
	var errs []error
	if s.Agent != nil {
		errs = append(errs, s.Agent.Stop(ctx))
	}
	if s.Proxy != nil {
		errs = append(errs, s.Proxy.Stop(ctx))
	}
	if s.proxyConn != nil {
		s.proxyConn.Close()
	}
	if s.Daemon != nil {
		errs = append(errs, s.Daemon.Stop(ctx))
	}
	return errors.Join(errs...)
}
