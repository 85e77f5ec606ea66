// Command atelier-broker runs Atelier's broker on mello: embedded NATS
// JetStream (or a client of an external cluster), the dispatcher, the job
// state, the file store and the HTTP endpoints. Its subcommands manage the
// participants registry.
package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"os"
	"strings"
	"time"

	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerd"
	"github.com/atelier-run/atelier/pkg/cli"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/storeconfig"
	"github.com/atelier-run/atelier/pkg/logging"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/scheduler"
	"github.com/atelier-run/atelier/pkg/wire"
)

const usage = `atelier-broker: Atelier's broker (queue, dispatcher, job state, file store).

Usage:
  atelier-broker [serve] [flags]        run the broker
  atelier-broker user add [flags]       add a participant or instructor
  atelier-broker user list [flags]      list users
  atelier-broker user passwd [flags]    set a user's password
  atelier-broker status [--watch]       the workshop as tables (queues, agents, participants)

Instructor and operator controls (through the broker's HTTP admin API):
  atelier-broker pause | resume
  atelier-broker policy round-robin|fifo|priority
  atelier-broker bump USER JOB
  atelier-broker cancel USER JOB...
  atelier-broker drain AGENT | undrain AGENT
  atelier-broker queues

Run 'atelier-broker <command> -h' for the flags of a command.
`

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "user":
		err = user(args)
	case "status":
		err = status(args)
	case "pause", "resume", "policy", "bump", "cancel", "drain", "undrain", "queues":
		err = admin(cmd, args)
	case "help":
		fmt.Print(usage)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "atelier-broker:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := pflag.NewFlagSet("serve", pflag.ExitOnError)
	def := wire.DefaultLimits()
	var (
		dataDir    = cli.String(fs, "data", "ATELIER_DATA", "./data", "data directory (JetStream store, instances, registry)")
		natsURL    = cli.String(fs, "nats-url", "ATELIER_NATS_URL", "", "external NATS URL; empty embeds a NATS server")
		natsUser   = cli.String(fs, "nats-user", "ATELIER_NATS_USER", "", "NATS user (the embedded server requires it of every client)")
		natsPass   = cli.String(fs, "nats-password", "ATELIER_NATS_PASSWORD", "", "NATS password")
		natsListen = cli.String(fs, "nats-listen", "ATELIER_NATS_LISTEN", "127.0.0.1:4222", "embedded NATS client listener for agents and proxies")
		maxMem     = cli.Int(fs, "nats-max-memory-mb", "ATELIER_NATS_MAX_MEMORY_MB", 256, "embedded JetStream memory limit")
		maxStore   = cli.Int(fs, "nats-max-store-gb", "ATELIER_NATS_MAX_STORE_GB", 10, "embedded JetStream disk limit")
		syncAlways = cli.Bool(fs, "nats-sync-always", "ATELIER_NATS_SYNC_ALWAYS", false, "fsync every JetStream write")
		httpAddr   = cli.String(fs, "http", "ATELIER_BROKER_HTTP", "127.0.0.1:8191", "HTTP listen address (health, status, dashboard)")
		backlog    = cli.Int(fs, "max-backlog", "ATELIER_MAX_BACKLOG", int(def.MaxBacklogPerUser), "unfinished jobs per participant")
		prefetch   = cli.Int(fs, "prefetch", "ATELIER_PREFETCH", 0, "tickets per pool beyond its agents' slots and their own prefetch")
		policy     = cli.String(fs, "policy", "ATELIER_POLICY", "round-robin", "initial scheduling policy: round-robin, fifo or priority (a switch at run time is kept across restarts)")
		maxRunning = cli.Int(fs, "max-running", "ATELIER_MAX_RUNNING", 0, "GPU slots one participant may hold at once (0: no cap)")
		quotaGB    = cli.Int(fs, "quota-gb", "ATELIER_QUOTA_GB", 0, "each participant's disk quota on mello in GiB (0: none; the registry's quotas.storage_bytes overrides)")
		outputTTL  = cli.Duration(fs, "output-ttl", "ATELIER_OUTPUT_TTL", 7*24*time.Hour, "how long outputs are kept on mello")
		tempTTL    = cli.Duration(fs, "temp-ttl", "ATELIER_TEMP_TTL", 24*time.Hour, "how long temp files (previews) are kept")
		inputTTL   = cli.Duration(fs, "input-ttl", "ATELIER_INPUT_TTL", 0, "how long uploads are kept (0: kept)")
		store      = storeconfig.Flags(fs)
		adminToken = cli.String(fs, "admin-token", "ATELIER_ADMIN_TOKEN", "", "instructor token of the HTTP admin API (default: generated into <data>/meta/admin-token)")
		historyTTL = cli.Duration(fs, "history-ttl", "ATELIER_HISTORY_TTL", def.HistoryTTL, "how long job history is kept")
		ackWait    = cli.Duration(fs, "ack-wait", "ATELIER_ACK_WAIT", def.AckWait, "how long an agent may hold a ticket without a sign of life")
		ticketChk  = cli.Duration(fs, "ticket-check-interval", "ATELIER_TICKET_CHECK_INTERVAL", 30*time.Second, "how often waiting jobs' tickets are checked (a vanished or dead one is released again) and participants' running caps re-read")
		logFormat  = cli.String(fs, "log-format", "ATELIER_LOG_FORMAT", "json", "json or console")
		logLevel   = cli.String(fs, "log-level", "ATELIER_LOG_LEVEL", "info", "debug, info, warn, error")
	)
	_ = fs.Parse(args)
	cli.MustApplyEnv(fs)
	log := logging.Must(*logFormat, *logLevel, "atelier-broker")
	if *ticketChk <= 0 {
		return fmt.Errorf("--ticket-check-interval (ATELIER_TICKET_CHECK_INTERVAL) must be positive, got %s", *ticketChk)
	}

	host, port, err := splitHostPort(*natsListen)
	if err != nil {
		return fmt.Errorf("--nats-listen: %w", err)
	}
	limits := def
	limits.MaxBacklogPerUser = int64(*backlog)
	limits.HistoryTTL = *historyTTL
	limits.AckWait = *ackWait

	st, err := store(datalayout.New(*dataDir))
	if err != nil {
		return err
	}
	ctx, cancel := cli.SignalContext()
	defer cancel()
	return brokerd.Run(ctx, broker.Config{
		Store:   st,
		DataDir: *dataDir, NATSURL: *natsURL, NATSUser: *natsUser, NATSPassword: *natsPass,
		NATSHost: host, NATSPort: port,
		NATSMaxMemory: int64(*maxMem) << 20, NATSMaxStore: int64(*maxStore) << 30, NATSSyncAlways: *syncAlways,
		HTTPAddr: *httpAddr, Limits: limits, Prefetch: *prefetch, Logger: log,
		Policy: scheduler.Policy(*policy), MaxRunningPerUser: *maxRunning, AdminToken: *adminToken,
		QuotaBytes: int64(*quotaGB) << 30, OutputTTL: *outputTTL, TempTTL: *tempTTL, InputTTL: *inputTTL,
		TicketCheckInterval: *ticketChk,
	})
}

func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", 0, errors.New("want host:port")
	}
	var port int
	if _, err := fmt.Sscanf(s[i+1:], "%d", &port); err != nil {
		return "", 0, fmt.Errorf("port %q: %w", s[i+1:], err)
	}
	return s[:i], port, nil
}

func user(args []string) error {
	if len(args) == 0 {
		return errors.New("user: want add, list or passwd")
	}
	sub, args := args[0], args[1:]
	fs := pflag.NewFlagSet("user "+sub, pflag.ExitOnError)
	dataDir := cli.String(fs, "data", "ATELIER_DATA", "./data", "data directory")
	id := fs.String("id", "", "user id, e.g. user007")
	name := fs.String("name", "", "display name")
	role := fs.String("role", "participant", "participant, instructor or admin")
	pool := fs.String("pool", wire.DefaultPool, "GPU pool")
	password := cli.String(fs, "password", "ATELIER_USER_PASSWORD", "", "password")
	_ = fs.Parse(args)
	cli.MustApplyEnv(fs)

	layout := datalayout.New(*dataDir)
	if err := layout.Ensure(); err != nil {
		return err
	}
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch sub {
	case "add":
		u, err := reg.Create(ctx, registry.User{ID: *id, DisplayName: *name, Role: registry.Role(*role), Pool: *pool}, *password)
		if err != nil {
			return err
		}
		if err := layout.EnsureInstance(u.ID); err != nil {
			return err
		}
		fmt.Printf("added %s (%s)\n", u.ID, u.Role)
	case "list":
		users, err := reg.List()
		if err != nil {
			return err
		}
		fmt.Printf("%-20s %-12s %-10s %-10s %s\n", "ID", "ROLE", "STATUS", "POOL", "NAME")
		for _, u := range users {
			fmt.Printf("%-20s %-12s %-10s %-10s %s\n", u.ID, u.Role, u.Status, u.Pool, u.DisplayName)
		}
	case "passwd":
		if err := reg.SetPassword(ctx, *id, *password); err != nil {
			return err
		}
		fmt.Printf("password of %s set\n", *id)
	default:
		return fmt.Errorf("user: unknown command %q", sub)
	}
	return nil
}
