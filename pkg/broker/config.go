// Package broker is the heart of Atelier on mello: it runs (or connects to)
// NATS JetStream, provisions the wire contract, takes in submitted jobs,
// releases tickets to GPU pools in fair order, answers agents' claims,
// applies their reports to the job state, keeps the agents' heartbeats and
// catalogs, receives output files into the file store, and serves its HTTP
// endpoints (health, status, metrics, the admin API and the instructor
// dashboard).
//
// The broker is the only writer of JOBS and AGENTS. Every transition is a
// compare-and-set on the job's key, so a stale writer fails loudly instead
// of overwriting newer state.
package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/scheduler"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/rs/zerolog"
)

// Defaults of Config's zero fields. The embedded NATS's listener and
// limits default to natsembed's (DefaultHost, DefaultPort, DefaultMaxMemory,
// DefaultMaxStore), the stream limits to wire.DefaultLimits, the file
// TTLs to retention's.
const (
	// DefaultHTTPAddr serves health, status, the admin API, the dashboard.
	DefaultHTTPAddr = "127.0.0.1:8191"
	// DefaultPolicy is the scheduling policy of a broker that has none
	// kept from an earlier run.
	DefaultPolicy = scheduler.RoundRobin
	// DefaultAgentTimeout is how long after its last heartbeat an agent
	// is taken for dead.
	DefaultAgentTimeout = 15 * time.Second
	// DefaultTickInterval paces housekeeping.
	DefaultTickInterval = time.Second
	// DefaultTicketCheckInterval paces the check of waiting jobs' tickets
	// and the re-reading of participants' running caps.
	DefaultTicketCheckInterval = 30 * time.Second
)

// Config configures a Broker.
type Config struct {
	// DataDir is mello's data directory (DESIGN.md "Data layout"). The
	// embedded server stores JetStream under DataDir/nats and output
	// files land under DataDir/instances/<user>/.
	DataDir string

	// NATSURL, when set, connects to an external NATS (a real cluster)
	// instead of embedding a server.
	NATSURL string
	// NATSUser and NATSPassword authenticate to NATS: for the embedded
	// server they are also the credentials it requires.
	NATSUser, NATSPassword string
	// NATSHost and NATSPort are the embedded server's client listener for
	// agents and proxies. Default 127.0.0.1:4222; port -1 picks a free one.
	NATSHost string
	NATSPort int
	// NATSMaxMemory and NATSMaxStore bound the embedded JetStream.
	NATSMaxMemory, NATSMaxStore int64
	// NATSSyncAlways fsyncs every JetStream write (see nats-notes.md).
	NATSSyncAlways bool

	// HTTPAddr serves health, status, the admin API and the dashboard.
	// Default DefaultHTTPAddr.
	HTTPAddr string

	// Limits bound the streams and buckets.
	Limits wire.Limits
	// Prefetch is how many tickets beyond its agents' slots (and their own
	// prefetch, see Heartbeat.Prefetch) each pool may have waiting in
	// DISPATCH. Default 0: agents that stage the next job ask for it.
	Prefetch int
	// Policy is the initial scheduling policy (round-robin, fifo,
	// priority); the instructor can switch it at run time, and the switch
	// survives a restart.
	Policy scheduler.Policy
	// MaxRunningPerUser caps each participant's jobs holding a GPU slot at
	// once, across pools (0: no cap). A registry entry's
	// quotas.max_running overrides it for that participant (re-read every
	// TicketCheckInterval).
	MaxRunningPerUser int
	// AdminToken authorizes the HTTP admin API (Authorization: Bearer).
	// Empty: one is generated and kept in DataDir/meta/admin-token.
	AdminToken string
	// Store keeps participants' files (default: the disk store under
	// DataDir/instances).
	Store filestore.Store
	// QuotaBytes is each participant's disk quota on mello over inputs,
	// outputs and temp files (0: none); a registry entry's
	// quotas.storage_bytes overrides it. An output that would exceed it is
	// refused and the job fails with the reason.
	QuotaBytes int64
	// OutputTTL, TempTTL and InputTTL are how long files are kept on mello
	// (defaults: outputs 7 days, temp 24 h, inputs kept).
	OutputTTL, TempTTL, InputTTL time.Duration

	// AgentTimeout is how long after its last heartbeat an agent is taken
	// for dead: its slots stop counting and its jobs may be re-claimed.
	AgentTimeout time.Duration
	// TickInterval paces housekeeping (dead agents, dispatch retries).
	TickInterval time.Duration
	// TicketCheckInterval paces the check for waiting jobs whose ticket
	// vanished and the re-reading of participants' running caps, and is
	// how soon a dead ticket of a job a slot still holds is looked at
	// again (default 30 s).
	TicketCheckInterval time.Duration

	// Observer is told about job and agent changes (metrics).
	Observer Observer

	Logger zerolog.Logger
}

func (c *Config) setDefaults() {
	if c.NATSHost == "" {
		c.NATSHost = natsembed.DefaultHost
	}
	if c.NATSPort == 0 {
		c.NATSPort = natsembed.DefaultPort
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.Limits == (wire.Limits{}) {
		c.Limits = wire.DefaultLimits()
	}
	if c.AgentTimeout == 0 {
		c.AgentTimeout = DefaultAgentTimeout
	}
	if c.Policy == "" {
		c.Policy = DefaultPolicy
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.TicketCheckInterval == 0 {
		c.TicketCheckInterval = DefaultTicketCheckInterval
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("DataDir is required"))
	}
	if c.Prefetch < 0 {
		errs = append(errs, fmt.Errorf("negative Prefetch %d", c.Prefetch))
	}
	if _, err := scheduler.ParsePolicy(string(c.Policy)); err != nil {
		errs = append(errs, err)
	}
	if c.MaxRunningPerUser < 0 {
		errs = append(errs, fmt.Errorf("MaxRunningPerUser must not be negative, got %d", c.MaxRunningPerUser))
	}
	if c.AgentTimeout <= 0 || c.TickInterval <= 0 || c.TicketCheckInterval <= 0 {
		errs = append(errs, errors.New("AgentTimeout, TickInterval and TicketCheckInterval must be positive"))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("broker config: %w", err)
	}
	return nil
}
