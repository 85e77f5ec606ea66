package proxy

import (
	"maps"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
)

// QueuePositionMessage is the WebSocket message type that tells a
// participant where their queued prompts stand in the workshop's dispatch
// order. ComfyUI has no such message (one GPU, one queue); its frontends
// ignore message types they do not know, and an Atelier UI extension or a
// script can show it. Data: {"positions": {prompt_id: position}} with
// position 1 = next to run, in the participant's pool.
const QueuePositionMessage = "atelier_queue_position"

// queuePositions keeps the participant's open sockets told of their queued
// prompts' positions, which move as anyone's jobs are dispatched. It asks
// the broker (api.broker.queues) every PositionInterval while the
// participant has a socket open and a prompt waiting, and sends only
// changes.
func (v *userView) queuePositions() {
	defer v.p.wg.Done()
	t := time.NewTicker(v.p.cfg.PositionInterval)
	defer t.Stop()
	var last map[string]int
	for {
		select {
		case <-v.ctx.Done():
			return
		case <-t.C:
		}
		v.mu.Lock()
		waiting := false
		for _, e := range v.jobs {
			waiting = waiting || e.rec.State == wire.StateQueued || (e.rec.State == wire.StateDispatched && e.rec.Agent == "")
		}
		listening := len(v.sockets) > 0
		v.mu.Unlock()
		if !listening {
			last = nil // a new socket gets the positions afresh
			continue
		}
		if !waiting && len(last) == 0 {
			continue
		}
		q, err := v.p.broker().Queues(v.ctx, wire.QueuesRequest{Caller: wire.Caller{User: v.user, Role: wire.RoleParticipant}})
		if err != nil {
			continue // the broker restarts, say: next tick
		}
		pos := map[string]int{}
		for _, j := range q.Jobs {
			if j.User == v.user && j.Position > 0 {
				pos[j.ID] = j.Position
			}
		}
		if maps.Equal(pos, last) {
			continue
		}
		last = pos
		f := textFrame(QueuePositionMessage, map[string]any{"positions": pos})
		v.mu.Lock()
		for s := range v.sockets {
			v.sendLocked(s, f)
		}
		v.mu.Unlock()
	}
}
