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
	ok := false
	defer func() {
		if !ok {
			s.Stop(context.Background())
		}
	}()

	var err error
	s.Daemon, err = brokerd.New(brokerd.Config{Broker: broker.Config{
		DataDir: s.Layout.Root, NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Limits: cfg.Limits, TickInterval: 200 * time.Millisecond, QuotaBytes: cfg.QuotaBytes, Logger: cfg.Logger,
	}})
	if err != nil {
		return nil, err
	}
	if err := s.Daemon.Start(ctx); err != nil {
		s.Daemon = nil
		return nil, err
	}
	s.Broker = s.Daemon.Broker

	s.Registry, err = registry.Open(registry.Config{Path: s.Layout.RegistryPath(), BcryptCost: bcrypt.MinCost})
	if err != nil {
		return nil, err
	}
	for _, u := range cfg.Users {
		if _, err := s.Registry.Create(ctx, registry.User{ID: u, Role: registry.RoleParticipant}, cfg.Password); err != nil {
			return nil, fmt.Errorf("stack: create user %s: %w", u, err)
		}
		if err := s.Layout.EnsureInstance(u); err != nil {
			return nil, err
		}
	}

	s.proxyConn, err = nats.Connect(s.Broker.ClientURL())
	if err != nil {
		return nil, err
	}
	store := diskstore.New(s.Layout)
	quotas, err := retention.NewQuotas(retention.QuotaConfig{Store: store, DefaultLimit: cfg.QuotaBytes})
	if err != nil {
		return nil, err
	}
	s.Proxy, err = proxy.New(proxy.Config{
		Addr: "127.0.0.1:0", Conn: s.proxyConn, Registry: s.Registry,
		Store: store, Quotas: quotas, Fallback: cfg.UIFallback, NewerErrors: cfg.NewerErrors, Logger: cfg.Logger,
		SpoolDir: s.Layout.Root + "/spool/uploads",
	})
	if err != nil {
		return nil, err
	}
	if err := s.Proxy.Start(ctx); err != nil {
		return nil, err
	}

	s.Runtime = &simulated.Runtime{
		GPUs: cfg.GPUs, Dir: cfg.Dir + "/sim", StepDelay: cfg.StepDelay,
		Configure: cfg.ConfigureSim, Logger: cfg.Logger,
	}
	s.Agent, err = agent.New(agent.Config{
		ID: "stack-agent", NATSURL: s.Broker.ClientURL(), Runtime: s.Runtime,
		HeartbeatInterval: 200 * time.Millisecond, RetryDelay: 500 * time.Millisecond, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	if err := s.Agent.Start(ctx); err != nil {
		return nil, err
	}
	if err := s.awaitCatalog(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Stack) awaitCatalog(ctx context.Context) error {
	nc, err := nats.Connect(s.Broker.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		st, err := s.Broker.Status(ctx)
		if err == nil && len(st.Agents) > 0 && st.Catalogs > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("stack: the agent did not report its catalog in 30s")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ProxyURL is the proxy's base URL.
func (s *Stack) ProxyURL() string { return s.Proxy.URL() }

// Stop stops the agent, the proxy and the broker.
func (s *Stack) Stop(ctx context.Context) {
	if s.Agent != nil {
		_ = s.Agent.Stop(ctx)
	}
	if s.Proxy != nil {
		_ = s.Proxy.Stop(ctx)
	}
	if s.proxyConn != nil {
		s.proxyConn.Close()
	}
	if s.Daemon != nil {
		_ = s.Daemon.Stop(ctx)
	}
}
