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
			reply.Done = a.interruptJob(ctx, req.User, req.JobID)
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

// interruptJob interrupts jobID if a slot runs it, or drops it if the
// agent holds it not yet started (claimed, being staged, prefetched). A
// claim still in flight is waited for: the broker may have recorded the
// job as ours before its answer reached the slot.
func (a *Agent) interruptJob(ctx context.Context, user, jobID string) bool {
	h := a.holding(user, jobID)
	if h == nil {
		return false
	}
	select {
	case <-h.resolved:
	case <-time.After(min(a.cfg.ClaimTimeout, 3*time.Second)):
		// The broker answered the claim before it sent this: the answer
		// is at most a scheduling delay away, unless the claim failed.
		return false
	case <-ctx.Done():
		return false
	}
	r := h.r
	if r == nil {
		return false // the claim did not give us the job
	}
	s := r.s
	s.mu.Lock()
	if s.pending == r {
		s.pending = nil
	}
	s.mu.Unlock()
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r.interrupt(ictx)
	return true
}
