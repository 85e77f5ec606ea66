package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/atelier-run/atelier/pkg/wire"
)

// eventBuffer is how many live events may wait for a view's loop. Live
// events are lossy by design: past this NATS drops them (slow consumer)
// instead of slowing the agent or the other participants.
const eventBuffer = 4096

// run loads the participant's jobs, then keeps the view current until its
// context ends or the JOBS watch does; the view's sockets are closed then.
func (v *userView) run() {
	defer v.p.wg.Done()
	defer func() {
		v.p.views.remove(v)
		v.cancel()
		v.setReady(errViewClosed) // if it never loaded
		v.closeSockets("job state watch ended; reconnect")
	}()

	f, err := v.openFeed()
	if err != nil {
		v.setReady(err)
		return
	}
	defer f.stop()
	v.p.wg.Add(1)
	go v.queuePositions()
	v.follow(f)
}

// viewFeed is what a view's loop reads: the participant's live events and
// the watch of their keys in JOBS.
type viewFeed struct {
	events chan *nats.Msg
	sub    *nats.Subscription
	watch  jetstream.KeyWatcher
}

// openFeed subscribes to the participant's live events, then watches their
// keys in JOBS. On error what it opened is closed again.
func (v *userView) openFeed() (*viewFeed, error) {
	kv, err := v.p.bucket(v.ctx, wire.BucketJobs)
	if err != nil {
		return nil, fmt.Errorf("open job state: %w", err)
	}
	v.kv = kv
	f := &viewFeed{events: make(chan *nats.Msg, eventBuffer)}
	f.sub, err = v.p.cfg.Conn.ChanSubscribe(wire.UserEventSubjects(v.user), f.events)
	if err != nil {
		return nil, fmt.Errorf("subscribe to live events: %w", err)
	}
	// Make sure the server has the subscription before the view says it is
	// ready: events published right after a socket opens must reach it.
	fctx, fcancel := context.WithTimeout(v.ctx, v.p.cfg.RequestTimeout)
	err = v.p.cfg.Conn.FlushWithContext(fctx)
	fcancel()
	if err != nil {
		_ = f.sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to live events: %w", err)
	}
	f.watch, err = kv.Watch(v.ctx, wire.UserJobKeys(v.user))
	if err != nil {
		_ = f.sub.Unsubscribe()
		return nil, fmt.Errorf("watch job state: %w", err)
	}
	return f, nil
}

// stop ends the watch, then the subscription.
func (f *viewFeed) stop() {
	stopWatcher(f.watch)
	_ = f.sub.Unsubscribe()
}

// follow applies JOBS changes and relays live events, in one order, until
// the view's context ends or the watch does.
func (v *userView) follow(f *viewFeed) {
	for {
		select {
		case <-v.ctx.Done():
			return
		case e, ok := <-f.watch.Updates():
			if !ok {
				v.p.log.Warn().Str("user", v.user).Msg("job state watch ended")
				return
			}
			if e == nil { // the watch's end of the initial values
				v.finishLoad()
				continue
			}
			// An agent publishes a job's live events before the report
			// that ends it, so they reach this connection before the JOBS
			// change the report becomes: relay them first. (select picks
			// among ready cases at random, and a job's final state drops
			// whatever live event of it comes after.)
			v.drainEvents(f.events)
			v.applyEntry(e, !v.loaded)
		case m := <-f.events:
			v.applyEvent(m)
		}
	}
}

// finishLoad ends the initial load: from now on JOBS changes become
// ComfyUI messages, and the requests waiting for the view go on.
func (v *userView) finishLoad() {
	if v.loaded {
		return
	}
	v.mu.Lock()
	v.reported = v.pending
	v.mu.Unlock()
	v.loaded = true
	v.setReady(nil)
}

// setReady records how the initial load ended and releases the requests
// waiting for it; only its first call counts.
func (v *userView) setReady(err error) {
	v.readyOnce.Do(func() {
		v.err = err
		close(v.ready)
	})
}

// drainEvents relays the live events already received, without waiting.
func (v *userView) drainEvents(events <-chan *nats.Msg) {
	for {
		select {
		case m := <-events:
			v.applyEvent(m)
		default:
			return
		}
	}
}

// stopWatcher stops w and drains its channel: the client library blocks
// its delivery goroutine on a full channel.
func stopWatcher(w jetstream.KeyWatcher) {
	_ = w.Stop()
	go func() {
		for range w.Updates() {
		}
	}()
}

// applyEntry applies one JOBS change and, after the initial load, turns the
// job's transition into ComfyUI messages.
func (v *userView) applyEntry(e jetstream.KeyValueEntry, initial bool) {
	id, ok := strings.CutPrefix(e.Key(), v.user+".")
	if !ok {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	prev := v.jobs[id]
	if prev != nil && e.Revision() <= prev.rev {
		return // already applied: read directly before the watch had it
	}
	if e.Operation() != jetstream.KeyValuePut {
		if prev != nil {
			delete(v.jobs, id)
			if prev.rec.State.Pending() {
				v.pending--
			}
			if !initial {
				v.broadcastStatusLocked(false)
			}
		}
		return
	}
	delete(v.submitting, id)
	var rec wire.JobRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		v.p.log.Error().Err(err).Str("key", e.Key()).Msg("undecodable job record ignored")
		return
	}
	// The key is authoritative: it is what the watch filtered on.
	rec.ID, rec.User = id, v.user
	withoutUserPaths(&rec)
	next := &jobEntry{rec: rec, rev: e.Revision()}
	if prev != nil && rec.State == wire.StateRunning {
		next.execNode = prev.execNode
	}
	if n, ok := v.earlyNode[id]; ok {
		delete(v.earlyNode, id)
		if next.execNode == "" && !rec.State.Final() {
			next.execNode = n
		}
	}
	v.jobs[id] = next
	if prev != nil && prev.rec.State.Pending() {
		v.pending--
	}
	if rec.State.Pending() {
		v.pending++
	}
	if initial {
		return
	}
	var old *wire.JobRecord
	if prev != nil {
		old = &prev.rec
	}
	v.emitTransitionLocked(old, &rec)
}

// lookUp reads the record of a job whose live events came before the JOBS
// watch delivered it, and applies it. An agent runs a job the moment the
// broker answers its claim, so its first events can overtake the job's
// queued and running changes; applied first, the record sends what
// ComfyUI sends before a prompt's events (the status with the new queue
// length, execution_start), and the watch's copies are then dropped as
// old (jobEntry.rev). Runs on the loop, without the view's lock.
func (v *userView) lookUp(jobID string) {
	if !v.loaded || v.kv == nil {
		return
	}
	v.mu.Lock()
	_, known := v.jobs[jobID]
	v.mu.Unlock()
	if known {
		return
	}
	if _, done := v.looked[jobID]; done {
		return
	}
	if len(v.looked) >= maxEarlyNodes {
		clear(v.looked)
	}
	v.looked[jobID] = struct{}{}
	ctx, cancel := context.WithTimeout(v.ctx, v.p.cfg.RequestTimeout)
	defer cancel()
	e, err := v.kv.Get(ctx, v.user+"."+jobID)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			v.p.log.Debug().Err(err).Str("user", v.user).Str("job", jobID).Msg("reading the record of a job whose events came first")
		}
		return
	}
	v.applyEntry(e, false)
}
