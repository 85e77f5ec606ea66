// Package dashboard is the instructor's web dashboard, served by the broker
// under /dashboard/: queue depth (total, per participant, per pool, over
// time), each agent's GPU slots with their jobs, progress, VRAM and
// heartbeat age, recent and failed jobs with their outputs, throughput per
// hour — live, over Server-Sent Events — and the controls to act on them
// (pause/resume, policy, bump, cancel, drain/undrain) through the broker
// API on api.broker.<op>.
//
// The dashboard keeps its own picture of the workshop by watching the JOBS
// and AGENTS buckets and the live evt.* progress, like any other client of
// the wire contract: it needs no hook into the broker's core, and it would
// run unchanged beside a broker in another process.
//
// Only instructors and admins of the registry may log in (form login, a
// session cookie, a CSRF token on every POST); participants get 403.
// Assets are embedded; there is no build step.
package dashboard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Config configures a Dashboard.
type Config struct {
	// Registry authenticates instructors. Required.
	Registry *registry.Registry
	// Store serves output thumbnails and files. Optional: without it the
	// dashboard lists outputs without pictures.
	Store filestore.Store
	// Conn returns the NATS connection to watch and to send broker API
	// requests on. It is called once, when the dashboard starts (Mount
	// sets it to the broker's own connection).
	Conn func() *nats.Conn
	// Status returns the broker's own picture (broker.Broker.Status);
	// optional. The dashboard uses it for the agents the broker counts as
	// live and the number of known catalogs.
	Status func(ctx context.Context) (broker.Status, error)

	// Prefix is the URL path the dashboard is mounted on. Default
	// "/dashboard/"; it must start and end with "/".
	Prefix string
	// SessionTTL is how long a login lasts. Default 12h (a workshop day).
	SessionTTL time.Duration
	// SecureCookies forces the Secure flag on the session cookie. Without
	// it the flag is set when the request came over TLS or through a
	// proxy that says X-Forwarded-Proto: https.
	SecureCookies bool

	// RecentJobs and FailedJobs bound the finished jobs listed. Default 30.
	RecentJobs, FailedJobs int
	// QueueRows bounds the unfinished jobs listed (the counts stay exact).
	// Default 300.
	QueueRows int
	// PollInterval paces the broker API "queues" request (paused, policy,
	// positions) and Status. Default 2s.
	PollInterval time.Duration
	// PushInterval is the shortest time between two updates pushed to a
	// browser; changes in between are coalesced. Default 250ms.
	PushInterval time.Duration
	// AgentLostAfter is when an agent whose heartbeat stopped is shown as
	// lost (AGENTS entries expire silently). Default 15s, the broker's.
	AgentLostAfter time.Duration
	// DepthPoints bounds the queue-depth series; older points are thinned
	// out. Default 4000.
	DepthPoints int
	// DepthSaveInterval is how often the queue-depth series is saved to
	// the BROKER bucket while it changes (it is also saved on Stop), so
	// the session's chart survives a restart. Default 10s.
	DepthSaveInterval time.Duration
	// RequestTimeout bounds a broker API request. Default 5s.
	RequestTimeout time.Duration

	Logger zerolog.Logger
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "/dashboard/"
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = 12 * time.Hour
	}
	if c.RecentJobs == 0 {
		c.RecentJobs = 30
	}
	if c.FailedJobs == 0 {
		c.FailedJobs = 30
	}
	if c.QueueRows == 0 {
		c.QueueRows = 300
	}
	if c.PollInterval == 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.PushInterval == 0 {
		c.PushInterval = 250 * time.Millisecond
	}
	if c.AgentLostAfter == 0 {
		c.AgentLostAfter = 15 * time.Second
	}
	if c.DepthPoints == 0 {
		c.DepthPoints = 4000
	}
	if c.DepthSaveInterval == 0 {
		c.DepthSaveInterval = 10 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Registry == nil {
		errs = append(errs, errors.New("missing Registry"))
	}
	if c.Conn == nil {
		errs = append(errs, errors.New("missing Conn"))
	}
	if len(c.Prefix) < 2 || c.Prefix[0] != '/' || c.Prefix[len(c.Prefix)-1] != '/' {
		errs = append(errs, fmt.Errorf("the Prefix must start and end with '/', got %q", c.Prefix))
	}
	for name, d := range map[string]time.Duration{"SessionTTL": c.SessionTTL, "PollInterval": c.PollInterval,
		"PushInterval": c.PushInterval, "AgentLostAfter": c.AgentLostAfter, "RequestTimeout": c.RequestTimeout} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	if c.RecentJobs < 0 || c.FailedJobs < 0 || c.QueueRows < 0 || c.DepthPoints < 2 {
		errs = append(errs, errors.New("RecentJobs, FailedJobs and QueueRows must not be negative, DepthPoints at least 2"))
	}
	if c.DepthSaveInterval < 0 {
		errs = append(errs, errors.New("DepthSaveInterval must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dashboard config: %w", err)
	}
	return nil
}
