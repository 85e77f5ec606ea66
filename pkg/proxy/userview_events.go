package proxy

import (
	"encoding/json"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

// applyEvent relays one live event to the socket it is for.
func (v *userView) applyEvent(m *nats.Msg) {
	agent, jobID, ev, ok := v.decodeEvent(m)
	if !ok {
		return
	}
	v.lookUp(jobID)

	v.mu.Lock()
	defer v.mu.Unlock()
	entry := v.jobs[jobID]
	clientID, ok := eventClient(entry, agent, &ev)
	if !ok {
		return
	}
	node, ok := v.noteNodeLocked(entry, jobID, &ev)
	if !ok {
		return
	}
	v.routeEventLocked(clientID, jobID, &ev, node)
}

// decodeEvent reads a live event of one of the participant's jobs; false
// for one that is not, or that is of the agent's ComfyUI rather than the
// job.
func (v *userView) decodeEvent(m *nats.Msg) (agent, jobID string, ev wire.Event, ok bool) {
	agent, user, jobID, err := wire.ParseEventSubject(m.Subject)
	if err != nil || user != v.user {
		return "", "", ev, false
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		v.p.log.Debug().Err(err).Str("subject", m.Subject).Msg("undecodable event dropped")
		return "", "", ev, false
	}
	if ev.JobID != "" && ev.JobID != jobID {
		return "", "", ev, false
	}
	switch ev.Type {
	case comfyapi.MsgStatus, comfyapi.MsgFeatureFlags, comfyapi.MsgLogs:
		// The agent's ComfyUI queue is not the participant's.
		return "", "", ev, false
	}
	return agent, jobID, ev, true
}

// eventClient is the client id an event of the job of entry (nil if the
// view has no record of it yet) goes to, "" for none; false when the event
// must be dropped: the job is over, or the event comes from an attempt
// that is not the current one.
func eventClient(entry *jobEntry, agent string, ev *wire.Event) (string, bool) {
	if entry == nil {
		return ev.ClientID, true
	}
	rec := &entry.rec
	if rec.State.Final() {
		return "", false // the job is over; its final messages went out already
	}
	if rec.State == wire.StateRunning {
		// Only the current attempt speaks: a stale agent may still
		// be relaying after the job moved on.
		if rec.Agent != "" && rec.Agent != agent {
			return "", false
		}
		if rec.Attempt != 0 && ev.Attempt != 0 && rec.Attempt != ev.Attempt {
			return "", false
		}
	}
	if ev.ClientID == "" {
		return rec.ClientID, true
	}
	return ev.ClientID, true
}

// noteNodeLocked returns the node an executing or executed event is about
// (nil for other events) and remembers an executing node for the job
// (entry nil: until its record comes); false when the event must be
// dropped.
func (v *userView) noteNodeLocked(entry *jobEntry, jobID string, ev *wire.Event) (*string, bool) {
	if ev.Type != comfyapi.MsgExecuting && ev.Type != comfyapi.MsgExecuted {
		return nil, true
	}
	var d struct {
		Node        *string `json:"node"`
		DisplayNode *string `json:"display_node"`
	}
	if json.Unmarshal(ev.Data, &d) != nil {
		return nil, false
	}
	if ev.Type == comfyapi.MsgExecuted {
		return d.Node, true
	}
	if d.Node == nil {
		// "executing null" ends the prompt: it is sent after the
		// final message and status, from the job's final state.
		return nil, false
	}
	n := *d.Node
	if d.DisplayNode != nil {
		n = *d.DisplayNode
	}
	if entry != nil {
		entry.execNode = n
		return d.Node, true
	}
	if _, known := v.earlyNode[jobID]; !known && len(v.earlyNode) >= maxEarlyNodes {
		for k := range v.earlyNode { // drop an arbitrary entry
			delete(v.earlyNode, k)
			break
		}
	}
	v.earlyNode[jobID] = n
	return d.Node, true
}

// routeEventLocked sends an event to the sockets of clientID, or, for a
// prompt without a client, what ComfyUI broadcasts to every socket.
func (v *userView) routeEventLocked(clientID, jobID string, ev *wire.Event, node *string) {
	if clientID == "" {
		// ComfyUI broadcasts these when a prompt has no client; the rest
		// goes nowhere (comfyui-api.md §3.2).
		switch ev.Type {
		case comfyapi.MsgProgress, comfyapi.MsgProgressState, comfyapi.MsgExecutionInterrupted, "":
			for s := range v.sockets {
				v.sendEventLocked(s, jobID, ev, node)
			}
		}
		return
	}
	if s := v.bySID[clientID]; s != nil {
		v.sendEventLocked(s, jobID, ev, node)
	}
}

// sendEventLocked sends one live event to s, unless s was sent it (or the
// JOBS change that stands for it) already.
func (v *userView) sendEventLocked(s *socket, jobID string, ev *wire.Event, node *string) {
	if ev.Type == "" {
		if len(ev.Binary) == 0 {
			return
		}
		if b := adaptBinary(ev.Binary, s.previewMetadata.Load()); b != nil {
			v.sendLocked(s, frame{binary: true, data: b})
		}
		return
	}
	st := s.track(jobID)
	switch ev.Type {
	case comfyapi.MsgExecutionStart:
		if st.start {
			return
		}
		st.start = true
	case comfyapi.MsgExecutionSuccess, comfyapi.MsgExecutionError, comfyapi.MsgExecutionInterrupted:
		if st.terminal {
			return
		}
		st.terminal = true
	case comfyapi.MsgExecuted:
		if node != nil {
			if _, done := st.executed[*node]; done {
				return
			}
			st.executed[*node] = struct{}{}
		}
	}
	data := ev.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	v.sendLocked(s, textFrame(ev.Type, data))
}
