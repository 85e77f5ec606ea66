package wire

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Limits are the explicit bounds of Atelier's streams and buckets. Every
// stream uses DiscardNew: a full queue is an error the submitter sees, never
// a silent loss of the oldest jobs.
type Limits struct {
	// MaxBacklogPerUser caps each user's unfinished jobs (SUBMIT
	// MaxMsgsPerSubject with DiscardNewPerSubject).
	MaxBacklogPerUser int64
	// MaxUnfinishedJobs caps SUBMIT as a whole.
	MaxUnfinishedJobs int64
	// MaxSubmitBytes caps SUBMIT's storage.
	MaxSubmitBytes int64
	// MaxTickets caps DISPATCH.
	MaxTickets int64
	// MaxReports caps REPORTS (the broker drains it continuously).
	MaxReports int64
	// MaxReportBytes caps REPORTS' storage.
	MaxReportBytes int64
	// HistoryTTL is how long JOBS keeps a job (the history retention).
	HistoryTTL time.Duration
	// MaxJobsBytes caps JOBS' storage.
	MaxJobsBytes int64
	// MaxCatalogBytes caps CATALOG's storage.
	MaxCatalogBytes int64
	// AgentTTL is how long an agent's entry outlives its last heartbeat.
	AgentTTL time.Duration
	// AckWait is how long an agent may hold a ticket without InProgress.
	AckWait time.Duration
	// MaxDeliver is how often a ticket is delivered before it is given up.
	MaxDeliver int
	// DuplicateWindow is the publish de-duplication window.
	DuplicateWindow time.Duration
	// Storage is file (default) or memory (tests, benchmarks).
	Storage jetstream.StorageType
}

// DefaultLimits returns the limits used when none are configured. JetStream
// reserves each stream's MaxBytes up front: the storage caps add up to about
// 6.3 GiB, within the embedded server's default 10 GiB store.
func DefaultLimits() Limits {
	return Limits{
		MaxBacklogPerUser: 100,
		MaxUnfinishedJobs: 100_000,
		MaxSubmitBytes:    1 << 30,
		MaxTickets:        100_000,
		MaxReports:        1_000_000,
		MaxReportBytes:    1 << 30,
		HistoryTTL:        14 * 24 * time.Hour,
		MaxJobsBytes:      4 << 30,
		MaxCatalogBytes:   256 << 20,
		AgentTTL:          30 * time.Second,
		AckWait:           60 * time.Second,
		MaxDeliver:        5,
		DuplicateWindow:   2 * time.Minute,
		Storage:           jetstream.FileStorage,
	}
}

// Validate checks that every limit is set to something usable.
func (l Limits) Validate() error {
	var errs []error
	pos := func(name string, v int64) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, v))
		}
	}
	pos("MaxBacklogPerUser", l.MaxBacklogPerUser)
	pos("MaxUnfinishedJobs", l.MaxUnfinishedJobs)
	pos("MaxSubmitBytes", l.MaxSubmitBytes)
	pos("MaxTickets", l.MaxTickets)
	pos("MaxReports", l.MaxReports)
	pos("MaxReportBytes", l.MaxReportBytes)
	pos("MaxJobsBytes", l.MaxJobsBytes)
	pos("MaxCatalogBytes", l.MaxCatalogBytes)
	pos("HistoryTTL", int64(l.HistoryTTL))
	pos("AgentTTL", int64(l.AgentTTL))
	pos("AckWait", int64(l.AckWait))
	pos("MaxDeliver", int64(l.MaxDeliver))
	pos("DuplicateWindow", int64(l.DuplicateWindow))
	return errors.Join(errs...)
}

// Resources are the provisioned streams and buckets.
type Resources struct {
	Submit   jetstream.Stream
	Dispatch jetstream.Stream
	Reports  jetstream.Stream
	Jobs     jetstream.KeyValue
	Agents   jetstream.KeyValue
	Catalog  jetstream.KeyValue
	Broker   jetstream.KeyValue
}

// Provision creates or updates SUBMIT, DISPATCH, REPORTS, JOBS, AGENTS,
// CATALOG and BROKER with the given limits. It is idempotent and safe to
// run on every start; a changed limit is applied to the existing stream.
func Provision(ctx context.Context, js jetstream.JetStream, l Limits) (*Resources, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("provision: limits: %w", err)
	}
	var res Resources
	for _, s := range res.streams(l) {
		st, err := js.CreateOrUpdateStream(ctx, s.cfg)
		if err != nil {
			return nil, fmt.Errorf("provision stream %s: %w", s.cfg.Name, err)
		}
		*s.into = st
	}
	for _, b := range res.buckets(l) {
		kv, err := js.CreateOrUpdateKeyValue(ctx, b.cfg)
		if err != nil {
			return nil, fmt.Errorf("provision bucket %s: %w", b.cfg.Bucket, err)
		}
		*b.into = kv
	}
	return &res, nil
}

// provisioned is one stream or bucket of the wire contract: its
// configuration, and the field of Resources it goes into.
type provisioned[C, T any] struct {
	cfg  C
	into *T
}

// streams is the table of the contract's streams under l.
func (res *Resources) streams(l Limits) []provisioned[jetstream.StreamConfig, jetstream.Stream] {
	return []provisioned[jetstream.StreamConfig, jetstream.Stream]{
		{into: &res.Submit, cfg: jetstream.StreamConfig{
			Name:                 StreamSubmit,
			Description:          "Atelier: accepted jobs that have not finished, one subject per user",
			Subjects:             []string{SubmitSubjects},
			Retention:            jetstream.LimitsPolicy,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			MaxMsgsPerSubject:    l.MaxBacklogPerUser,
			MaxMsgs:              l.MaxUnfinishedJobs,
			MaxBytes:             l.MaxSubmitBytes,
			Duplicates:           l.DuplicateWindow,
			Storage:              l.Storage,
		}},
		{into: &res.Dispatch, cfg: jetstream.StreamConfig{
			Name:        StreamDispatch,
			Description: "Atelier: tickets released in fair order, one subject per pool",
			Subjects:    []string{DispatchSubjects},
			Retention:   jetstream.WorkQueuePolicy,
			Discard:     jetstream.DiscardNew,
			MaxMsgs:     l.MaxTickets,
			Duplicates:  l.DuplicateWindow,
			Storage:     l.Storage,
		}},
		{into: &res.Reports, cfg: jetstream.StreamConfig{
			Name:        StreamReports,
			Description: "Atelier: agents' reports on jobs, applied by the broker",
			Subjects:    []string{ReportSubjects},
			Retention:   jetstream.WorkQueuePolicy,
			Discard:     jetstream.DiscardNew,
			MaxMsgs:     l.MaxReports,
			MaxBytes:    l.MaxReportBytes,
			Duplicates:  l.DuplicateWindow,
			Storage:     l.Storage,
		}},
	}
}

// buckets is the table of the contract's key-value buckets under l.
func (res *Resources) buckets(l Limits) []provisioned[jetstream.KeyValueConfig, jetstream.KeyValue] {
	return []provisioned[jetstream.KeyValueConfig, jetstream.KeyValue]{
		{into: &res.Jobs, cfg: jetstream.KeyValueConfig{
			Bucket:      BucketJobs,
			Description: "Atelier: every job's state, key <user>.<job>",
			History:     1,
			TTL:         l.HistoryTTL,
			MaxBytes:    l.MaxJobsBytes,
			Storage:     l.Storage,
		}},
		{into: &res.Agents, cfg: jetstream.KeyValueConfig{
			Bucket:      BucketAgents,
			Description: "Atelier: last heartbeat of each live agent",
			History:     1,
			TTL:         l.AgentTTL,
			MaxBytes:    16 << 20,
			Storage:     l.Storage,
		}},
		{into: &res.Catalog, cfg: jetstream.KeyValueConfig{
			Bucket:      BucketCatalog,
			Description: "Atelier: ComfyUI catalogs per agent and merged per pool (gzip JSON)",
			History:     1,
			MaxBytes:    l.MaxCatalogBytes,
			Storage:     l.Storage,
		}},
		{into: &res.Broker, cfg: jetstream.KeyValueConfig{
			Bucket:      BucketBroker,
			Description: "Atelier: the broker's settings (pause, policy)",
			History:     1,
			MaxBytes:    1 << 20,
			Storage:     l.Storage,
		}},
	}
}

// BrokerSettings is the value of the "settings" key of BROKER.
type BrokerSettings struct {
	Paused bool   `json:"paused"`
	Policy string `json:"policy,omitempty"`
}

// EnsurePoolConsumer creates or updates the durable pull consumer of a
// pool's tickets. Agents only bind to it; the broker creates it when a pool
// first appears.
func EnsurePoolConsumer(ctx context.Context, dispatch jetstream.Stream, pool string, l Limits) (jetstream.Consumer, error) {
	c, err := dispatch.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       DispatchConsumer(pool),
		Description:   "Atelier: tickets of pool " + pool,
		FilterSubject: DispatchSubject(pool),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       l.AckWait,
		MaxDeliver:    l.MaxDeliver,
		// One ticket per free slot: more outstanding deliveries than
		// slots would only hide tickets from other agents.
		MaxAckPending: 10_000,
		MaxWaiting:    4096,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer for pool %s: %w", pool, err)
	}
	return c, nil
}

// EnsureReportsConsumer creates or updates the broker's durable consumer on
// REPORTS.
func EnsureReportsConsumer(ctx context.Context, reports jetstream.Stream) (jetstream.Consumer, error) {
	c, err := reports.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       ConsumerReports,
		Description:   "Atelier: the broker applies reports to JOBS",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure reports consumer: %w", err)
	}
	return c, nil
}

// SmallLimits are DefaultLimits scaled down for memory storage: tests,
// benchmarks and the in-process stack.
func SmallLimits() Limits {
	l := DefaultLimits()
	l.Storage = jetstream.MemoryStorage
	// 32+32+64+32 MiB, plus 16 MiB of AGENTS: within the embedded
	// server's default 256 MiB of memory.
	l.MaxSubmitBytes = 32 << 20
	l.MaxReportBytes = 32 << 20
	l.MaxJobsBytes = 64 << 20
	l.MaxCatalogBytes = 32 << 20
	return l
}
