package metrics

import (
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

var (
	descStoreBytes = prometheus.NewDesc("atelier_filestore_bytes",
		"Bytes stored on mello per participant and folder (input, output, temp): uploads in, outputs shipped from the GPUs.", []string{"user", "kind"}, nil)
	descStoreFiles = prometheus.NewDesc("atelier_filestore_files",
		"Files stored on mello per participant and folder.", []string{"user", "kind"}, nil)
)

// fileStoreCollector walks data/instances/<user>/{input,output,temp} at
// most once per refresh interval. The output bytes are what agents shipped
// to mello (the wire contract has no per-file size in JobRecord outputs).
type fileStoreCollector struct {
	root    string
	refresh time.Duration
	now     func() time.Time
	log     zerolog.Logger

	mu     sync.Mutex
	at     time.Time
	usage  map[[2]string][2]int64 // {user, kind} → {bytes, files}
	walked bool
}

func newFileStoreCollector(dataDir string, refresh time.Duration, now func() time.Time, log zerolog.Logger) *fileStoreCollector {
	return &fileStoreCollector{root: filepath.Join(dataDir, "instances"), refresh: refresh, now: now, log: log}
}

func (c *fileStoreCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStoreBytes
	ch <- descStoreFiles
}

func (c *fileStoreCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.walked || c.now().Sub(c.at) >= c.refresh {
		c.usage, c.at, c.walked = c.walk(), c.now(), true
	}
	for k, v := range c.usage {
		ch <- prometheus.MustNewConstMetric(descStoreBytes, prometheus.GaugeValue, float64(v[0]), k[0], k[1])
		ch <- prometheus.MustNewConstMetric(descStoreFiles, prometheus.GaugeValue, float64(v[1]), k[0], k[1])
	}
}

func (c *fileStoreCollector) walk() map[[2]string][2]int64 {
	usage := map[[2]string][2]int64{}
	users, err := os.ReadDir(c.root)
	if err != nil {
		if !os.IsNotExist(err) {
			c.log.Warn().Err(err).Msg("metrics: read instances")
		}
		return usage
	}
	for _, u := range users {
		if !u.IsDir() {
			continue
		}
		for _, kind := range []string{"input", "output", "temp"} {
			var bytes, files int64
			dir := filepath.Join(c.root, u.Name(), kind)
			// WalkDir does not follow symlinks, so a link cannot make a
			// participant's folder count someone else's files.
			_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil
				}
				if info, err := d.Info(); err == nil {
					bytes += info.Size()
					files++
				}
				return nil
			})
			usage[[2]string{u.Name(), kind}] = [2]int64{bytes, files}
		}
	}
	return usage
}
