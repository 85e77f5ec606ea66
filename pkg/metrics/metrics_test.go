package metrics

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

type testBundle struct {
	m   *Metrics
	now time.Time
	dir string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	tb := &testBundle{now: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), dir: t.TempDir()}
	m, err := New(Config{DataDir: tb.dir, Now: func() time.Time { return tb.now }})
	require.NoError(t, err)
	tb.m = m
	return tb
}

func (tb *testBundle) scrape(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tb.m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	require.Equal(t, 200, rec.Code)
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func rec(user, id string, st wire.JobState, mut func(*wire.JobRecord)) wire.JobRecord {
	r := wire.JobRecord{ID: id, User: user, Pool: "default", State: st, CreatedAt: time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)}
	if mut != nil {
		mut(&r)
	}
	return r
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := New(Config{WaitBuckets: []float64{2, 1}})
	require.ErrorContains(t, err, "buckets must increase")
}

// A scripted life of three jobs: the gauges show what is unfinished, the
// counters and histograms what happened.
func TestJobLifecycle(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	m := tb.m
	m.JobChanged("", rec("u1", "a", wire.StateQueued, nil))
	m.JobChanged("", rec("u1", "b", wire.StateQueued, nil))
	m.JobChanged("", rec("u2", "c", wire.StateQueued, nil))
	// A job replayed after a restart (already released once) is not new.
	m.JobChanged("", rec("u2", "d", wire.StateDispatched, func(r *wire.JobRecord) { r.Releases = 1 }))

	start := time.Date(2026, 5, 1, 9, 0, 4, 0, time.UTC)
	m.JobChanged(wire.StateQueued, rec("u1", "a", wire.StateDispatched, nil))
	m.JobChanged(wire.StateDispatched, rec("u1", "a", wire.StateRunning, func(r *wire.JobRecord) { r.Attempt, r.StartedAt = 1, start }))
	m.JobChanged(wire.StateRunning, rec("u1", "a", wire.StateSucceeded, func(r *wire.JobRecord) {
		r.Attempt, r.StartedAt, r.FinishedAt = 1, start, start.Add(3*time.Second)
		r.Outputs = map[string]json.RawMessage{"9": json.RawMessage(`{"images":[{"filename":"x.png","subfolder":"","type":"output"},{"filename":"y.png","type":"output"}]}`)}
	}))
	m.JobChanged(wire.StateQueued, rec("u1", "b", wire.StateCancelled, nil))

	require.Equal(t, 3.0, testutil.ToFloat64(m.submitted.WithLabelValues("default")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.finished.WithLabelValues("default", "succeeded")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.finished.WithLabelValues("default", "cancelled")))
	require.Equal(t, 2.0, testutil.ToFloat64(m.outputs.WithLabelValues("default")))

	out := tb.scrape(t)
	for _, want := range []string{
		`atelier_queue_depth{pool="default"} 1`,
		`atelier_user_jobs{pool="default",state="queued",user="u2"} 1`,
		`atelier_user_jobs{pool="default",state="dispatched",user="u2"} 1`,
		`atelier_jobs{state="queued"} 1`,
		`atelier_jobs{state="dispatched"} 1`,
		`atelier_jobs{state="running"} 0`,
		`atelier_job_wait_seconds_count{pool="default"} 1`,
		`atelier_job_wait_seconds_sum{pool="default"} 4`,
		`atelier_job_run_seconds_sum{pool="default",state="succeeded"} 3`,
	} {
		require.Contains(t, out, want)
	}
	require.NotContains(t, out, `user="u1"`, "u1 has nothing unfinished")
}

func TestAgentsAndFileStore(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	out := filepath.Join(tb.dir, "instances", "user001", "output", "sim")
	require.NoError(t, os.MkdirAll(out, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(out, "a.png"), make([]byte, 1000), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(out, "b.png"), make([]byte, 24), 0o644))

	tb.m.AgentSeen(wire.Heartbeat{Agent: "box1", Pool: "default", ScratchBytes: 77, Slots: []wire.SlotStatus{
		{ID: "gpu0", GPU: "H100", State: wire.SlotBusy, VRAMTotal: 80 << 30, VRAMFree: 60 << 30, Utilization: 93},
		{ID: "gpu1", GPU: "H100", State: wire.SlotIdle, VRAMTotal: 80 << 30, VRAMFree: 80 << 30, Utilization: 0.5},
	}})
	tb.m.AgentSeen(wire.Heartbeat{Agent: "box2", Pool: "big", Slots: []wire.SlotStatus{{ID: "gpu0", State: wire.SlotIdle}}})
	tb.now = tb.now.Add(20 * time.Second)
	tb.m.AgentLost("box2")

	s := tb.scrape(t)
	for _, want := range []string{
		`atelier_agent_up{agent="box1",pool="default"} 1`,
		`atelier_agent_up{agent="box2",pool="big"} 0`,
		`atelier_agent_slots{agent="box1",pool="default",state="busy"} 1`,
		`atelier_agent_slots{agent="box1",pool="default",state="idle"} 1`,
		`atelier_gpu_utilization_ratio{agent="box1",gpu="H100",slot="gpu0"} 0.93`,
		`atelier_gpu_utilization_ratio{agent="box1",gpu="H100",slot="gpu1"} 0.5`,
		`atelier_gpu_memory_used_bytes{agent="box1",gpu="H100",slot="gpu0"} 2.147483648e+10`,
		`atelier_agent_heartbeat_age_seconds{agent="box1"} 20`,
		`atelier_agent_scratch_bytes{agent="box1"} 77`,
		`atelier_filestore_bytes{kind="output",user="user001"} 1024`,
		`atelier_filestore_files{kind="output",user="user001"} 2`,
		`atelier_queue_depth{pool="big"} 0`,
	} {
		require.Contains(t, s, want)
	}
	require.False(t, strings.Contains(s, `atelier_agent_slots{agent="box2"`), "a lost agent's slots are unknown")
}
