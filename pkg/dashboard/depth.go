package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// The queue-depth chart covers the whole session, so it must outlive a
// broker restart: the series is kept in the BROKER bucket under depthKey,
// saved every DepthSaveInterval while it changes and when the dashboard
// stops, and loaded before the watchers start. A restarted broker's chart
// carries on from where it stopped (with the gap of the restart).

// depthKey is the BROKER key of the queue-depth series.
const depthKey = "dashboard.depth"

// storedDepth is the saved series: points as [t ms, waiting, running].
type storedDepth struct {
	Points [][3]int64 `json:"points"`
}

// loadDepth restores the saved series into the model.
func (d *Dashboard) loadDepth(ctx context.Context, kv jetstream.KeyValue) error {
	e, err := kv.Get(ctx, depthKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dashboard: load the queue-depth series: %w", err)
	}
	var s storedDepth
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		d.log.Warn().Err(err).Msg("undecodable queue-depth series left out")
		return nil
	}
	points := make([]DepthPoint, 0, len(s.Points))
	for _, p := range s.Points {
		points = append(points, DepthPoint{T: p[0], Waiting: int(p[1]), Running: int(p[2])})
	}
	d.model.restoreDepth(points)
	return nil
}

// saveDepth writes the series if it changed since the last save; it
// returns the version saved.
func (d *Dashboard) saveDepth(ctx context.Context, kv jetstream.KeyValue, saved uint64) uint64 {
	points, version := d.model.depthSeries()
	if version == saved {
		return saved
	}
	s := storedDepth{Points: make([][3]int64, len(points))}
	for i, p := range points {
		s.Points[i] = [3]int64{p.T, int64(p.Waiting), int64(p.Running)}
	}
	data, _ := json.Marshal(s)
	if _, err := kv.Put(ctx, depthKey, data); err != nil {
		d.log.Warn().Err(err).Msg("save the queue-depth series")
		return saved
	}
	return version
}

// keepDepth saves the series every DepthSaveInterval and once more when
// the dashboard stops.
func (d *Dashboard) keepDepth(ctx context.Context, kv jetstream.KeyValue) {
	defer d.wg.Done()
	tick := time.NewTicker(d.cfg.DepthSaveInterval)
	defer tick.Stop()
	var saved uint64
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			d.saveDepth(sctx, kv, saved)
			cancel()
			return
		case <-tick.C:
			saved = d.saveDepth(ctx, kv, saved)
		}
	}
}

// startDepth loads the saved series and starts keeping it.
func (d *Dashboard) startDepth(ctx context.Context, js jetstream.JetStream) error {
	kv, err := js.KeyValue(ctx, wire.BucketBroker)
	if err != nil {
		return fmt.Errorf("dashboard: bucket %s: %w", wire.BucketBroker, err)
	}
	if err := d.loadDepth(ctx, kv); err != nil {
		return err
	}
	d.wg.Add(1)
	go d.keepDepth(ctx, kv)
	return nil
}

// restoreDepth puts saved points before what the model sampled so far.
func (m *model) restoreDepth(points []DepthPoint) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.touch()
	var first int64
	if len(m.depth) > 0 {
		first = m.depth[0].T
	}
	kept := points[:0:0]
	for _, p := range points {
		if first == 0 || p.T < first {
			kept = append(kept, p)
		}
	}
	m.depth = append(kept, m.depth...)
	m.depthVersion++
	for len(m.depth) > m.cfg.DepthPoints {
		m.thinDepthLocked()
	}
}

// depthSeries returns a copy of the series and its version (which grows
// with each change of the series).
func (m *model) depthSeries() ([]DepthPoint, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]DepthPoint(nil), m.depth...), m.depthVersion
}
