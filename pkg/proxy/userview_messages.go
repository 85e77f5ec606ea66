package proxy

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

// emitTransitionLocked sends the durable ComfyUI messages of one job change
// (old is nil for a job this view had not seen), in the order of
// comfyui-api.md §3.5: execution_start, executed …, then the final
// message, status and executing null.
func (v *userView) emitTransitionLocked(old, rec *wire.JobRecord) {
	var oldState wire.JobState
	if old != nil {
		oldState = old.State
	}
	s := v.bySID[rec.ClientID]
	if rec.ClientID == "" {
		s = nil
	}
	final := rec.State.Final() && !oldState.Final()
	started := rec.State == wire.StateRunning || !rec.StartedAt.IsZero()
	if !final {
		// A new count first: ComfyUI's status of the enqueue and of the
		// dequeue precede execution_start.
		v.broadcastStatusLocked(false)
	}

	if s != nil && started && (rec.State == wire.StateRunning || final) {
		st := s.track(rec.ID)
		if !st.start {
			st.start = true
			v.sendLocked(s, textFrame(comfyapi.MsgExecutionStart, map[string]any{
				"prompt_id": rec.ID, "timestamp": millis(rec.StartedAt)}))
		}
	}
	// While the job runs, executed comes from the live events, in
	// ComfyUI's order; the record fills in at the end what they lost.
	if s != nil && final {
		v.sendExecutedLocked(s, rec)
	}
	if final {
		cancelledEarly := rec.State == wire.StateCancelled && !started
		if s != nil && !cancelledEarly {
			st := s.track(rec.ID)
			if !st.terminal {
				st.terminal = true
				typ, data := terminalMessage(rec)
				v.sendLocked(s, textFrame(typ, data))
			}
		}
		v.broadcastStatusLocked(true)
		if s != nil && !cancelledEarly {
			v.sendLocked(s, textFrame(comfyapi.MsgExecuting, map[string]any{"node": nil, "prompt_id": rec.ID}))
		}
		if m := v.sent[rec.ClientID]; m != nil {
			delete(m, rec.ID)
			if len(m) == 0 && v.bySID[rec.ClientID] == nil {
				delete(v.sent, rec.ClientID)
			}
		}
	}
}

// sendExecutedLocked sends "executed" for each output node of rec the socket
// has not been sent yet (by the live events or an earlier change): the live
// stream is lossy, the record is not.
func (v *userView) sendExecutedLocked(s *socket, rec *wire.JobRecord) {
	if len(rec.Outputs) == 0 {
		return
	}
	nodes := make([]string, 0, len(rec.Outputs))
	for n := range rec.Outputs {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, compareNodeIDs)
	st := s.track(rec.ID)
	for _, n := range nodes {
		if _, done := st.executed[n]; done {
			continue
		}
		st.executed[n] = struct{}{}
		v.sendLocked(s, textFrame(comfyapi.MsgExecuted, map[string]any{
			"node": n, "display_node": displayNode(rec, n), "output": rec.Outputs[n], "prompt_id": rec.ID}))
	}
}

// displayNode is the node's display id from the history meta, else the node
// id itself (they differ only for expanded nodes and subgraphs).
func displayNode(rec *wire.JobRecord, node string) string {
	var meta struct {
		DisplayNode string `json:"display_node"`
	}
	if raw, ok := rec.Meta[node]; ok && json.Unmarshal(raw, &meta) == nil && meta.DisplayNode != "" {
		return meta.DisplayNode
	}
	return node
}

// terminalMessage is the final WebSocket message of a finished job.
func terminalMessage(rec *wire.JobRecord) (string, any) {
	ts := millis(rec.FinishedAt)
	switch rec.State {
	case wire.StateSucceeded:
		return comfyapi.MsgExecutionSuccess, map[string]any{"prompt_id": rec.ID, "timestamp": ts}
	case wire.StateFailed:
		if len(rec.Error) > 0 && !isNull(rec.Error) {
			return comfyapi.MsgExecutionError, rec.Error
		}
		if m := findMessage(rec.Messages, comfyapi.MsgExecutionError); m != nil {
			return comfyapi.MsgExecutionError, m
		}
		return comfyapi.MsgExecutionError, synthesizedError(rec)
	default: // interrupted, cancelled
		if m := findMessage(rec.Messages, comfyapi.MsgExecutionInterrupted); m != nil {
			return comfyapi.MsgExecutionInterrupted, m
		}
		return comfyapi.MsgExecutionInterrupted, map[string]any{
			"prompt_id": rec.ID, "node_id": nil, "node_type": nil, "executed": []string{}, "timestamp": ts}
	}
}

// synthesizedError is an execution_error payload for a job that failed
// without a ComfyUI error (the agent gave up, the broker timed it out): the
// frontend shows exception_message in its error dialog.
func synthesizedError(rec *wire.JobRecord) map[string]any {
	reason := rec.Reason
	if reason == "" {
		reason = "the job failed"
	}
	return map[string]any{
		"prompt_id": rec.ID, "node_id": "", "node_type": "", "executed": []string{},
		"exception_message": reason, "exception_type": "AtelierError", "traceback": []string{},
		"current_inputs": map[string]any{}, "current_outputs": []string{},
		"timestamp": millis(rec.FinishedAt),
	}
}

// findMessage returns the data of the last [event, data] pair of type typ.
func findMessage(msgs []json.RawMessage, typ string) json.RawMessage {
	for i := len(msgs) - 1; i >= 0; i-- {
		var pair []json.RawMessage
		if json.Unmarshal(msgs[i], &pair) != nil || len(pair) != 2 {
			continue
		}
		var t string
		if json.Unmarshal(pair[0], &t) == nil && t == typ {
			return pair[1]
		}
	}
	return nil
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		t = time.Now()
	}
	return t.UnixMilli()
}

// broadcastStatusLocked sends status (without sid) to every socket when the
// participant's queue_remaining changed, or always when force is set (the
// status of §3.5 step 6 between a job's final message and executing null).
func (v *userView) broadcastStatusLocked(force bool) {
	if !force && v.pending == v.reported {
		return
	}
	v.reported = v.pending
	f := statusFrame(v.pending, "")
	for s := range v.sockets {
		v.sendLocked(s, f)
	}
}
