package main

import (
	"net"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerd"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/atelier-run/atelier/pkg/logging"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/retention"
	"github.com/atelier-run/atelier/pkg/scheduler"
	"github.com/atelier-run/atelier/pkg/wire"
)

func newServeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "serve [flags]",
		Short:   "Run the broker (also what atelier-broker does without a subcommand)",
		GroupID: "run",
	}
	cmd.RunE = serveFlags(cmd.Flags()).run
	return cmd
}

// serveOptions are serve's flags; config reads them into a brokerd.Config.
type serveOptions struct {
	dataDir, natsURL, natsUser, natsPass, natsListen, httpAddr, policy, adminToken *string
	maxMemMB, maxStoreGB, backlog, prefetch, maxRunning, quotaGB                   *int
	syncAlways                                                                     *bool
	outputTTL, tempTTL, inputTTL, historyTTL, ackWait, ticketCheck                 *time.Duration
	store                                                                          func() storeconfig.Config
	logger                                                                         func() (zerolog.Logger, error)
}

// serveFlags defines serve's flags on fs, each with its package's default.
func serveFlags(fs *pflag.FlagSet) *serveOptions {
	lim := wire.DefaultLimits()
	return &serveOptions{
		dataDir:    cli.String(fs, "data", "ATELIER_DATA", datalayout.DefaultRoot, "data directory (JetStream store, instances, registry)"),
		natsURL:    cli.String(fs, "nats-url", "ATELIER_NATS_URL", "", "external NATS URL; empty embeds a NATS server"),
		natsUser:   cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user (the embedded server requires it of every client)"),
		natsPass:   cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password"),
		natsListen: cli.String(fs, "nats-listen", "ATELIER_NATS_LISTEN", net.JoinHostPort(natsembed.DefaultHost, strconv.Itoa(natsembed.DefaultPort)), "embedded NATS client listener for agents and proxies"),
		maxMemMB:   cli.Int(fs, "nats-max-memory-mb", "ATELIER_NATS_MAX_MEMORY_MB", int(natsembed.DefaultMaxMemory>>20), "embedded JetStream memory limit"),
		maxStoreGB: cli.Int(fs, "nats-max-store-gb", "ATELIER_NATS_MAX_STORE_GB", int(natsembed.DefaultMaxStore>>30), "embedded JetStream disk limit"),
		syncAlways: cli.Bool(fs, "nats-sync-always", "ATELIER_NATS_SYNC_ALWAYS", false, "fsync every JetStream write"),
		httpAddr:   cli.String(fs, "http", "ATELIER_BROKER_HTTP", broker.DefaultHTTPAddr, "HTTP listen address (health, status, dashboard)"),
		backlog:    cli.Int(fs, "max-backlog", "ATELIER_MAX_BACKLOG", int(lim.MaxBacklogPerUser), "unfinished jobs per participant"),
		prefetch:   cli.Int(fs, "prefetch", "ATELIER_PREFETCH", 0, "tickets per pool beyond its agents' slots and their own prefetch"),
		policy:     cli.String(fs, "policy", "ATELIER_POLICY", string(broker.DefaultPolicy), "initial scheduling policy: round-robin, fifo or priority (a switch at run time is kept across restarts)"),
		maxRunning: cli.Int(fs, "max-running", "ATELIER_MAX_RUNNING", 0, "GPU slots one participant may hold at once (0: no cap)"),
		quotaGB:    cli.Int(fs, "quota-gb", "ATELIER_QUOTA_GB", 0, "each participant's disk quota on mello in GiB (0: none; the registry's quotas.storage_bytes overrides)"),
		outputTTL:  cli.Duration(fs, "output-ttl", "ATELIER_OUTPUT_TTL", retention.DefaultOutputTTL, "how long outputs are kept on mello"),
		tempTTL:    cli.Duration(fs, "temp-ttl", "ATELIER_TEMP_TTL", retention.DefaultTempTTL, "how long temp files (previews) are kept"),
		inputTTL:   cli.Duration(fs, "input-ttl", "ATELIER_INPUT_TTL", 0, "how long uploads are kept (0: kept)"),
		store:      storeconfig.Flags(fs),
		adminToken: cli.String(fs, "admin-token", "ATELIER_ADMIN_TOKEN", "", "instructor token of the HTTP admin API (default: generated into <data>/meta/admin-token)"),
		historyTTL: cli.Duration(fs, "history-ttl", "ATELIER_HISTORY_TTL", lim.HistoryTTL, "how long job history is kept"),
		ackWait:    cli.Duration(fs, "ack-wait", "ATELIER_ACK_WAIT", lim.AckWait, "how long an agent may hold a ticket without a sign of life"),
		ticketCheck: cli.Duration(fs, "ticket-check-interval", "ATELIER_TICKET_CHECK_INTERVAL", broker.DefaultTicketCheckInterval,
			"how often waiting jobs' tickets are checked (a vanished or dead one is released again) and participants' running caps re-read"),
		logger: cli.LogFlags(fs, "atelier-broker", logging.DefaultFormat),
	}
}

// config reads the flags into the daemon's configuration; a value the
// broker cannot run with is a usage error.
func (o *serveOptions) config() (brokerd.Config, error) {
	log, err := o.logger()
	if err != nil {
		return brokerd.Config{}, err
	}
	if *o.ticketCheck <= 0 {
		return brokerd.Config{}, cli.Usagef("--ticket-check-interval (ATELIER_TICKET_CHECK_INTERVAL) must be positive, got %s", *o.ticketCheck)
	}
	host, portText, err := net.SplitHostPort(*o.natsListen)
	if err != nil {
		return brokerd.Config{}, cli.Usagef("--nats-listen: %v", err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return brokerd.Config{}, cli.Usagef("--nats-listen: port %q is not a number", portText)
	}
	limits := wire.DefaultLimits()
	limits.MaxBacklogPerUser = int64(*o.backlog)
	limits.HistoryTTL = *o.historyTTL
	limits.AckWait = *o.ackWait
	return brokerd.Config{
		Store: o.store(),
		Broker: broker.Config{
			DataDir: *o.dataDir, NATSURL: *o.natsURL, NATSUser: *o.natsUser, NATSPassword: *o.natsPass,
			NATSHost: host, NATSPort: port,
			NATSMaxMemory: int64(*o.maxMemMB) << 20, NATSMaxStore: int64(*o.maxStoreGB) << 30, NATSSyncAlways: *o.syncAlways,
			HTTPAddr: *o.httpAddr, Limits: limits, Prefetch: *o.prefetch, Logger: log,
			Policy: scheduler.Policy(*o.policy), MaxRunningPerUser: *o.maxRunning, AdminToken: *o.adminToken,
			QuotaBytes: int64(*o.quotaGB) << 30, OutputTTL: *o.outputTTL, TempTTL: *o.tempTTL, InputTTL: *o.inputTTL,
			TicketCheckInterval: *o.ticketCheck,
		},
	}, nil
}

// run runs the broker until the command's context ends (SIGINT, SIGTERM).
func (o *serveOptions) run(cmd *cobra.Command, _ []string) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	return brokerd.Run(cmd.Context(), cfg)
}
