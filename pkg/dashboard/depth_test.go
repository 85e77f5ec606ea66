package dashboard

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// The queue-depth chart outlives the dashboard (and so a broker restart):
// it is saved in the BROKER bucket, and a new dashboard starts from it.
func TestQueueDepthChartSurvivesARestart(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	// setup's dashboard keeps its own series under the same key (every
	// 10 s, and on Stop): its save could land between d1's last and d2's
	// load on a slow run. Only this test's dashboards keep one here.
	stop(t, tb.dash)
	require.NoError(t, tb.res.Broker.Purge(tb.ctx, depthKey))
	reg, err := registry.Open(registry.Config{Path: tb.layout.RegistryPath()})
	require.NoError(t, err)
	var clock atomic.Int64
	t0 := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	clock.Store(t0.UnixMilli())
	now := func() time.Time { return time.UnixMilli(clock.Load()).UTC() }
	start := func() *Dashboard {
		t.Helper()
		d, err := New(Config{Registry: reg, Conn: func() *nats.Conn { return tb.nc }, PollInterval: time.Hour,
			DepthSaveInterval: 20 * time.Millisecond, Now: now, Logger: zerolog.Nop()})
		require.NoError(t, err)
		require.NoError(t, d.Start(tb.ctx))
		return d
	}
	awaitDepth := func(d *Dashboard, want DepthPoint) {
		t.Helper()
		var series []DepthPoint
		awaitModel(t, d, func() bool {
			series, _ = d.model.depthSeries()
			return len(series) > 0 && series[len(series)-1] == want
		}, func() string { return fmt.Sprintf("depth never reached %+v: %+v", want, series) })
	}

	d1 := start()
	job := wire.JobRecord{ID: "j1", User: "user001", Pool: "default", State: wire.StateQueued, CreatedAt: t0}
	tb.putJob(t, job)
	awaitDepth(d1, DepthPoint{T: t0.UnixMilli(), Waiting: 1})
	clock.Add(5000)
	job.State, job.Attempt, job.StartedAt = wire.StateRunning, 1, now()
	tb.putJob(t, job)
	awaitDepth(d1, DepthPoint{T: t0.UnixMilli() + 5000, Running: 1})
	clock.Add(5000)
	job.State, job.FinishedAt = wire.StateSucceeded, now()
	tb.putJob(t, job)
	awaitDepth(d1, DepthPoint{T: t0.UnixMilli() + 10000})
	saved, _ := d1.model.depthSeries()
	stop(t, d1)

	e, err := tb.res.Broker.Get(tb.ctx, depthKey)
	require.NoError(t, err, "the series is in the BROKER bucket")
	require.Contains(t, string(e.Value()), "points")

	// Later, a new dashboard (a restarted broker) starts from the saved
	// series and extends it.
	clock.Add(60_000)
	d2 := start()
	t.Cleanup(func() { stop(t, d2) })
	tb.putJob(t, wire.JobRecord{ID: "j2", User: "user001", Pool: "default", State: wire.StateQueued, CreatedAt: now()})
	awaitDepth(d2, DepthPoint{T: t0.UnixMilli() + 70_000, Waiting: 1})
	series, _ := d2.model.depthSeries()
	require.Equal(t, saved, series[:len(saved)], "the chart before the restart is kept")
	s := d2.Snapshot()
	require.Equal(t, saved[0], s.Depth[0])
}
