package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watch feeds the model until ctx ends: the JOBS and AGENTS buckets (their
// current values first, then every change), the live evt.* progress, and a
// periodic poll of the broker API and Status. A watcher that ends (the
// connection dropped) is started again.
func (d *Dashboard) watch(ctx context.Context, nc *nats.Conn, api *brokerapi.Client) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("dashboard: jetstream: %w", err)
	}
	// The saved chart first, so the replay of JOBS extends it.
	if err := d.startDepth(ctx, js); err != nil {
		d.log.Warn().Err(err).Msg("the queue-depth chart will not outlive a restart")
	}
	sub, err := nc.Subscribe(wire.EventSubjects, func(msg *nats.Msg) {
		agent, user, job, err := wire.ParseEventSubject(msg.Subject)
		if err != nil {
			return
		}
		// Previews are binary frames: skip them before decoding.
		var ev wire.Event
		if json.Unmarshal(msg.Data, &ev) != nil || ev.Type == "" {
			return
		}
		d.model.event(agent, user, job, ev)
	})
	if err != nil {
		return fmt.Errorf("dashboard: subscribe to events: %w", err)
	}
	// Events are lossy by design: drop them rather than grow without bound
	// if the dashboard falls behind a burst of previews.
	_ = sub.SetPendingLimits(4096, 64<<20)

	d.wg.Add(3)
	go func() {
		defer d.wg.Done()
		<-ctx.Done()
		_ = sub.Unsubscribe()
	}()
	go func() {
		defer d.wg.Done()
		d.keepWatching(ctx, js, wire.BucketJobs, d.applyJob)
	}()
	go func() {
		defer d.wg.Done()
		d.keepWatching(ctx, js, wire.BucketAgents, d.applyAgent)
	}()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.poll(ctx, api)
	}()
	return nil
}

// keepWatching watches one bucket, starting over after an error.
func (d *Dashboard) keepWatching(ctx context.Context, js jetstream.JetStream, bucket string, apply func(jetstream.KeyValueEntry)) {
	for {
		err := d.watchBucket(ctx, js, bucket, apply)
		if ctx.Err() != nil {
			return
		}
		d.log.Warn().Err(err).Str("bucket", bucket).Msg("dashboard: watch ended; starting over")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (d *Dashboard) watchBucket(ctx context.Context, js jetstream.JetStream, bucket string, apply func(jetstream.KeyValueEntry)) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", bucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
			if e == nil {
				continue // the end of the initial values
			}
			apply(e)
		}
	}
}

func (d *Dashboard) applyJob(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		d.model.deleteJob(e.Key())
		return
	}
	var rec wire.JobRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		d.log.Warn().Err(err).Str("key", e.Key()).Msg("dashboard: undecodable job record")
		return
	}
	d.model.putJob(rec)
}

func (d *Dashboard) applyAgent(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		d.model.deleteAgent(e.Key())
		return
	}
	var hb wire.Heartbeat
	if err := json.Unmarshal(e.Value(), &hb); err != nil {
		d.log.Warn().Err(err).Str("key", e.Key()).Msg("dashboard: undecodable heartbeat")
		return
	}
	d.model.putAgent(hb, e.Created())
}

// poll asks the broker API for the queues (paused, policy, positions) and
// the broker for its Status, every PollInterval and whenever an action
// asks for a refresh.
func (d *Dashboard) poll(ctx context.Context, api *brokerapi.Client) {
	tick := time.NewTicker(d.cfg.PollInterval)
	defer tick.Stop()
	for {
		d.pollOnce(ctx, api)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-d.refresh:
		}
	}
}

func (d *Dashboard) pollOnce(ctx context.Context, api *brokerapi.Client) {
	q, err := api.Queues(ctx, wire.QueuesRequest{Caller: dashboardCaller})
	if err != nil {
		if !errors.Is(err, brokerapi.ErrUnavailable) && ctx.Err() == nil {
			d.log.Debug().Err(err).Msg("dashboard: queues")
		}
		d.model.setQueues(nil)
	} else {
		d.model.setQueues(&q)
	}
	if d.cfg.Status != nil {
		sctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
		st, err := d.cfg.Status(sctx)
		cancel()
		if err == nil {
			agents := make([]string, 0, len(st.Agents))
			for _, a := range st.Agents {
				agents = append(agents, a.Agent)
			}
			d.model.setLive(agents, st.Catalogs)
		}
	}
}

// dashboardCaller is who the dashboard is when it reads for itself (not
// on behalf of a logged-in instructor).
var dashboardCaller = wire.Caller{User: "dashboard", Role: wire.RoleAdmin}
