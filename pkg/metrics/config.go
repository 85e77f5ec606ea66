// Package metrics exposes Atelier's broker to Prometheus: queue depth per
// participant and pool, jobs by state, wait and run time histograms, agents'
// slots and GPUs, file store usage and the NATS connection.
//
// Metrics implements broker.Observer, so it sees every job transition and
// heartbeat as the broker applies it (no polling of JOBS), and http.Handler
// for GET /metrics. It keeps its own prometheus.Registry: nothing leaks into
// the global default registry, and several brokers in one test process do
// not collide.
package metrics

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config configures Metrics. The zero value is usable.
type Config struct {
	// DataDir is the broker's data directory. When set, the bytes each
	// participant stores under data/instances/<user>/{input,output,temp}
	// are exported as atelier_filestore_bytes.
	DataDir string
	// FileStoreRefresh is the shortest time between two walks of the file
	// store: a scrape inside it reuses the last figures, so frequent
	// scrapes of a large store stay cheap. Default 30s.
	FileStoreRefresh time.Duration
	// WaitBuckets and RunBuckets are the histogram buckets, in seconds, of
	// the time a job waits for a GPU and the time it runs. Defaults suit
	// workshop jobs: from a second to a quarter of an hour.
	WaitBuckets, RunBuckets []float64
	// Logger reports file store walk errors. Default: disabled.
	Logger zerolog.Logger
	// Now returns the current time. Default time.Now (tests pin it).
	Now func() time.Time
}

// DefaultBuckets are the default wait and run time buckets, in seconds.
var DefaultBuckets = []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900}

func (c *Config) setDefaults() {
	if c.FileStoreRefresh == 0 {
		c.FileStoreRefresh = 30 * time.Second
	}
	if c.WaitBuckets == nil {
		c.WaitBuckets = DefaultBuckets
	}
	if c.RunBuckets == nil {
		c.RunBuckets = DefaultBuckets
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.FileStoreRefresh < 0 {
		errs = append(errs, errors.New("FileStoreRefresh must not be negative"))
	}
	for _, b := range [][]float64{c.WaitBuckets, c.RunBuckets} {
		for i := 1; i < len(b); i++ {
			if b[i] <= b[i-1] {
				errs = append(errs, errors.New("histogram buckets must increase"))
				break
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(errors.New("metrics config"), err)
	}
	return nil
}

// compile-time reminder that the registry type is the one promhttp serves.
var _ prometheus.Gatherer = (*prometheus.Registry)(nil)
