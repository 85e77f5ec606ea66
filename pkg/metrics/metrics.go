package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics collects the broker's figures. Create it with New, pass it as
// broker.Config.Observer, and serve it (it is an http.Handler) on /metrics.
type Metrics struct {
	cfg Config
	reg *prometheus.Registry
	h   http.Handler

	// Counters and histograms are updated as transitions happen.
	submitted *prometheus.CounterVec
	finished  *prometheus.CounterVec
	retries   *prometheus.CounterVec
	outputs   *prometheus.CounterVec
	wait      *prometheus.HistogramVec
	run       *prometheus.HistogramVec
	// transferBytes and transferFiles count the file store's traffic
	// (see CountTransfers).
	transferBytes, transferFiles *prometheus.CounterVec

	// mu guards what the gauges are computed from at scrape time: the
	// observer runs on the broker's core goroutine, scrapes on HTTP ones.
	mu     sync.Mutex
	jobs   map[string]jobInfo // JOBS key → unfinished job
	agents map[string]*agentInfo
	conn   func() *nats.Conn

	files *fileStoreCollector
}

type jobInfo struct {
	user, pool string
	state      wire.JobState
}

type agentInfo struct {
	hb       wire.Heartbeat
	lastSeen time.Time
	lost     bool
}

// New returns Metrics with its collectors registered.
func New(cfg Config) (*Metrics, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Metrics{
		cfg:    cfg,
		reg:    prometheus.NewRegistry(),
		jobs:   map[string]jobInfo{},
		agents: map[string]*agentInfo{},
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_jobs_submitted_total", Help: "Jobs taken into the queue, by pool.",
		}, []string{"pool"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_jobs_finished_total", Help: "Jobs that reached a final state (succeeded, failed, cancelled, interrupted), by pool.",
		}, []string{"pool", "state"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_job_retries_total", Help: "Running jobs given back for another attempt (agent lost, watchdog, drain), by pool.",
		}, []string{"pool"}),
		outputs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_output_files_total", Help: "Output files of succeeded jobs (images, videos …) stored on mello, by pool.",
		}, []string{"pool"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "atelier_job_wait_seconds", Help: "Time from submission to the first start on a GPU.", Buckets: cfg.WaitBuckets,
		}, []string{"pool"}),
		run: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "atelier_job_run_seconds", Help: "Time from the start on a GPU to the final state, by pool and final state.", Buckets: cfg.RunBuckets,
		}, []string{"pool", "state"}),
	}
	m.transferBytes, m.transferFiles = newTransferCounters()
	m.reg.MustRegister(m.submitted, m.finished, m.retries, m.outputs, m.wait, m.run, m.transferBytes, m.transferFiles,
		stateCollector{m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if cfg.DataDir != "" {
		m.files = newFileStoreCollector(cfg.DataDir, cfg.FileStoreRefresh, cfg.Now, cfg.Logger)
		m.reg.MustRegister(m.files)
	}
	m.h = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
	return m, nil
}

// SetConn tells Metrics how to reach the broker's NATS connection (pass
// broker.Conn: it is only valid after Start, so it is read at scrape time).
func (m *Metrics) SetConn(conn func() *nats.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.conn = conn
}

// Registry is the Prometheus registry, for adding collectors of companions.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ServeHTTP serves the Prometheus exposition format.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.h.ServeHTTP(w, r) }
