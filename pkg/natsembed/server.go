// Package natsembed runs the NATS server with JetStream inside the broker's
// process: the embedded default of a one-box Atelier.
package natsembed

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/atelier-run/atelier/internal/waitctx"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Defaults of Config's zero fields.
const (
	// DefaultHost and DefaultPort are the client listener: NATS's own
	// port, on loopback (wire.DefaultNATSURL is where clients look).
	DefaultHost = "127.0.0.1"
	DefaultPort = 4222
	// DefaultMaxMemory and DefaultMaxStore bound JetStream.
	DefaultMaxMemory int64 = 256 << 20
	DefaultMaxStore  int64 = 10 << 30
	// DefaultMaxPayload is the largest message.
	DefaultMaxPayload int32 = 8 << 20
	// DefaultReadyTimeout bounds the wait for the listener and JetStream.
	DefaultReadyTimeout = 30 * time.Second
)

// Config configures the embedded server.
type Config struct {
	// StoreDir is where JetStream keeps its files. Required: an empty
	// StoreDir would silently fall back to $TMPDIR/nats/jetstream.
	StoreDir string
	// Host and Port of the client listener. Port -1 picks a free port
	// (tests); default 4222.
	Host string
	Port int
	// MaxMemory and MaxStore bound JetStream; the server's own defaults
	// are 75 % of RAM and the whole free disk. Defaults: 256 MiB, 10 GiB.
	MaxMemory int64
	MaxStore  int64
	// MaxPayload is the largest message (default 8 MiB: prompts with
	// embedded workflows and gzip'd catalogs travel as one message).
	MaxPayload int32
	// SyncAlways fsyncs every write: no acknowledged job is lost on power
	// loss, at a throughput cost (see nats-notes.md).
	SyncAlways bool
	// User and Password, when set, are required of every client.
	User, Password string
	// ReadyTimeout bounds the wait for the listener and for JetStream.
	ReadyTimeout time.Duration
	Logger       zerolog.Logger
}

func (c *Config) setDefaults() {
	if c.Host == "" {
		c.Host = DefaultHost
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.MaxMemory == 0 {
		c.MaxMemory = DefaultMaxMemory
	}
	if c.MaxStore == 0 {
		c.MaxStore = DefaultMaxStore
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
}

func (c *Config) validate() error {
	if c.StoreDir == "" {
		return errors.New("natsembed: StoreDir is required")
	}
	if c.MaxMemory < 0 || c.MaxStore < 0 || c.MaxPayload < 0 {
		return errors.New("natsembed: limits must not be negative")
	}
	return nil
}

// Server is a running embedded NATS server.
type Server struct {
	cfg Config
	ns  *server.Server
}

// Start starts the server and waits until it accepts connections and
// JetStream answers: ReadyForConnections alone does not mean JetStream is
// ready.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName:         "atelier-broker",
		Host:               cfg.Host,
		Port:               cfg.Port,
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
		MaxPayload:         cfg.MaxPayload,
		SyncAlways:         cfg.SyncAlways,
		NoSigs:             true,
		NoLog:              true,
		Username:           cfg.User,
		Password:           cfg.Password,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: new server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(cfg.ReadyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("natsembed: server not ready for connections after %s", cfg.ReadyTimeout)
	}
	s := &Server{cfg: cfg, ns: ns}
	if err := s.awaitJetStream(ctx); err != nil {
		_ = s.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	cfg.Logger.Info().Str("url", s.ClientURL()).Str("store", cfg.StoreDir).Msg("embedded NATS with JetStream ready")
	return s, nil
}

func (s *Server) awaitJetStream(ctx context.Context) error {
	nc, err := s.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("natsembed: jetstream client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	for {
		_, err := js.AccountInfo(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsembed: JetStream not ready: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ClientURL is the URL agents and proxies connect to (without credentials).
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// ClientURLWithAuth is ClientURL with the configured credentials, if any.
func (s *Server) ClientURLWithAuth() string {
	u, err := url.Parse(s.ns.ClientURL())
	if err != nil || s.cfg.User == "" {
		return s.ns.ClientURL()
	}
	u.User = url.UserPassword(s.cfg.User, s.cfg.Password)
	return u.String()
}

// Connect opens an in-process client connection.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s.ns), nats.Name("atelier-broker")}, opts...)
	if s.cfg.User != "" {
		opts = append(opts, nats.UserInfo(s.cfg.User, s.cfg.Password))
	}
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("natsembed: connect in-process: %w", err)
	}
	return nc, nil
}

// Stop stops the server and waits until it has, or until ctx ends.
// Close clients first.
func (s *Server) Stop(ctx context.Context) error {
	s.ns.Shutdown()
	if err := waitctx.Wait(ctx, s.ns.WaitForShutdown); err != nil {
		return fmt.Errorf("natsembed: stop: %w", err)
	}
	return nil
}
