package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
)

// handleControl answers the broker's commands on ctl.agent.<agent>.
func (a *Agent) handleControl(ctx context.Context, m *nats.Msg) {
	var req wire.ControlRequest
	var reply wire.ControlReply
	if err := json.Unmarshal(m.Data, &req); err != nil {
		reply.Error = "undecodable control request: " + err.Error()
	} else {
		switch req.Op {
		case wire.CtlInterrupt:
			reply.Done = a.interruptJob(ctx, req.JobID)
		case wire.CtlDrain:
			reply.Done = a.Drain(req.Deadline)
		case wire.CtlUndrain:
			reply.Done = a.Undrain()
		default:
			reply.Error = "unknown control op " + req.Op
		}
	}
	a.log.Info().Str("op", req.Op).Str("job", req.JobID).Bool("done", reply.Done).Str("error", reply.Error).Msg("control request")
	data, _ := json.Marshal(reply)
	if m.Reply != "" {
		_ = m.Respond(data)
	}
}

// interruptJob interrupts jobID if a slot runs it, or drops it if a slot
// holds it prefetched.
func (a *Agent) interruptJob(ctx context.Context, jobID string) bool {
	for _, s := range a.slots {
		s.mu.Lock()
		var r *run
		switch {
		case s.cur != nil && s.cur.job.ID == jobID:
			r = s.cur
		case s.pending != nil && s.pending.job.ID == jobID:
			r, s.pending = s.pending, nil
		}
		s.mu.Unlock()
		if r != nil {
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			r.interrupt(ictx)
			cancel()
			return true
		}
	}
	return false
}
