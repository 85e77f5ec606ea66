package metrics

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// The Grafana dashboard in deploy/ is built on these metrics: every
// metric its queries (and its variables) name is one the registry exports,
// once the broker has seen a little of everything.
func TestGrafanaDashboardNamesRegisteredMetrics(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "atelier.json"))
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash), "the dashboard is JSON")
	name := regexp.MustCompile(`\batelier_[a-z0-9_]+`)
	used := map[string][]string{} // metric → panels
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				used[n] = append(used[n], p.Title)
			}
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			for _, n := range name.FindAllString(q, -1) {
				used[n] = append(used[n], "variable")
			}
		}
	}
	require.NotEmpty(t, used)

	// A broker's worth of observations, so every family has samples.
	tb := setup(t)
	m := tb.m
	m.JobChanged("", rec("u1", "a", wire.StateQueued, nil))
	start := time.Date(2026, 5, 1, 9, 0, 4, 0, time.UTC)
	m.JobChanged(wire.StateQueued, rec("u1", "a", wire.StateRunning, func(r *wire.JobRecord) { r.Attempt, r.StartedAt = 1, start }))
	m.JobChanged(wire.StateRunning, rec("u1", "a", wire.StateDispatched, func(r *wire.JobRecord) { r.Attempt = 1 })) // a retry
	m.JobChanged(wire.StateDispatched, rec("u1", "a", wire.StateRunning, func(r *wire.JobRecord) { r.Attempt, r.StartedAt = 2, start }))
	m.JobChanged(wire.StateRunning, rec("u1", "a", wire.StateSucceeded, func(r *wire.JobRecord) {
		r.Attempt, r.StartedAt, r.FinishedAt = 2, start, start.Add(time.Second)
	}))
	m.JobChanged("", rec("u2", "b", wire.StateQueued, nil))
	m.AgentSeen(wire.Heartbeat{Agent: "box1", Pool: "default", ScratchBytes: 1, Slots: []wire.SlotStatus{
		{ID: "gpu0", GPU: "H100", State: wire.SlotBusy, VRAMTotal: 80 << 30, VRAMFree: 60 << 30, Utilization: 0.5},
	}})
	layout := datalayout.New(tb.dir)
	require.NoError(t, layout.Ensure())
	require.NoError(t, layout.EnsureInstance("u1"))
	st := m.CountTransfers(diskstore.New(layout))
	w, err := st.Create(context.Background(), filestore.Ref{User: "u1", Kind: filestore.KindOutput, Name: "a.png"})
	require.NoError(t, err)
	_, _ = w.Write([]byte("png"))
	_, err = w.Commit(context.Background(), "")
	require.NoError(t, err)
	ns, err := natsembed.Start(context.Background(), natsembed.Config{StoreDir: t.TempDir(), Port: -1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	m.SetConn(func() *nats.Conn { return nc })

	families, err := m.Registry().Gather()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				exported[f.GetName()+suffix] = true
			}
		}
	}
	var missing []string
	for n, panels := range used {
		if !exported[n] {
			missing = append(missing, n+" (in "+strings.Join(slices.Compact(panels), ", ")+")")
		}
	}
	slices.Sort(missing)
	require.Empty(t, missing, "the Grafana dashboard names metrics the broker does not export")
	require.Contains(t, used, "atelier_transfer_bytes_total", "the dashboard shows the transfer bytes")
}
