package proxy

import (
	"encoding/binary"
	"encoding/json"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/wire"
)

func TestWSConnect(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.putRecord(record(alice, 1, wire.StateQueued))

	ws := b.dial(alice, "?clientId=abc")
	m := ws.expect("status")
	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 1}}, "sid": "abc"}`, string(m.Data))

	// feature_flags, the first client message, is answered.
	ws.send(map[string]any{"type": "feature_flags", "data": map[string]any{"supports_preview_metadata": true}})
	m = ws.expect("feature_flags")
	require.JSONEq(t, `{"supports_preview_metadata": true, "max_upload_size": 104857600}`, string(m.Data))

	// Without clientId the sid is uuid4().hex.
	ws2 := b.dial(alice, "")
	sid := ws2.expect("status").data(t)["sid"].(string)
	require.Regexp(t, regexp.MustCompile(`^[0-9a-f]{32}$`), sid)

	// Other origins are refused; no credentials, no socket.
	_, resp, err := b.tryDial(alice, "", "Origin", "http://evil.example")
	require.Error(t, err)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	_, resp, err = b.tryDial(alice, "", "Authorization", "")
	require.Error(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	_, resp, err = b.tryDial(alice, "", "Authorization", basic(bob))
	require.Error(t, err)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
}

func TestWSSocketLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *Config) { c.MaxSocketsPerUser = 2 }),
		withSignals(func(s *testSignals) { s.socketRemoved.Init() }))
	ws1 := b.dial(alice, "?clientId=1")
	ws1.expect("status")
	ws2 := b.dial(alice, "?clientId=2")
	ws2.expect("status")
	_, resp, err := b.tryDial(alice, "?clientId=3")
	require.Error(t, err)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	// Bob has his own allowance.
	b.dial(bob, "?clientId=1").expect("status")

	// A closed socket frees its place.
	require.NoError(t, ws1.c.Close(websocket.StatusNormalClosure, ""))
	b.signals.socketRemoved.WaitFor(t, "socket 1 removed", func(sid string) bool { return sid == "1" })
	c, _, err := b.tryDial(alice, "?clientId=3")
	require.NoError(t, err)
	_ = c.CloseNow()
}

// sentinel sends an event for sid and waits for it: everything sent to the
// socket before it has been read by then, so "nothing else arrived" holds.
func sentinel(t *testing.T, b *bundle, ws *wsConn, user, sid, job string) {
	t.Helper()
	b.publishEvent("agent1", user, wire.Event{JobID: job, ClientID: sid, Attempt: 1, Type: "sentinel",
		Data: json.RawMessage(`{"sid": "` + sid + `"}`)})
	m := ws.expect("sentinel")
	require.JSONEq(t, `{"sid": "`+sid+`"}`, string(m.Data))
}

func TestWSEventRouting(t *testing.T) {
	t.Parallel()
	b := setup(t)
	job := record(alice, 1, wire.StateRunning)
	b.putRecord(job)

	a := b.dial(alice, "?clientId=A")
	a.expect("status")
	a2 := b.dial(alice, "?clientId=B")
	a2.expect("status")
	bobA := b.dial(bob, "?clientId=A") // same sid, other participant
	bobA.expect("status")

	progress := json.RawMessage(`{"value": 3, "max": 20, "prompt_id": "` + job.ID + `", "node": "3"}`)
	b.publishEvent("agent1", alice, wire.Event{JobID: job.ID, ClientID: "A", Attempt: 1, Type: "progress", Data: progress})
	m := a.expect("progress")
	require.JSONEq(t, string(progress), string(m.Data))

	// A binary preview with metadata goes as is to a client that supports
	// it, and as a plain preview (event 1) to one that does not.
	meta := []byte(`{"node_id": "3", "prompt_id": "` + job.ID + `", "image_type": "image/png"}`)
	frame := binary.BigEndian.AppendUint32(nil, 4)
	frame = binary.BigEndian.AppendUint32(frame, uint32(len(meta)))
	frame = append(append(frame, meta...), "PNGDATA"...)
	a2.send(map[string]any{"type": "feature_flags", "data": map[string]any{"supports_preview_metadata": true}})
	a2.expect("feature_flags")
	b.publishEvent("agent1", alice, wire.Event{JobID: job.ID, ClientID: "A", Attempt: 1, Binary: frame})
	b.publishEvent("agent1", alice, wire.Event{JobID: job.ID, ClientID: "B", Attempt: 1, Binary: frame})
	m = a.read()
	require.Equal(t, append([]byte{0, 0, 0, 1, 0, 0, 0, 2}, "PNGDATA"...), m.bin)
	m = a2.read()
	require.Equal(t, frame, m.bin)

	// A stale attempt's agent and the agent's own ComfyUI status are dropped.
	b.publishEvent("agent2", alice, wire.Event{JobID: job.ID, ClientID: "A", Attempt: 1, Type: "progress", Data: progress})
	b.publishEvent("agent1", alice, wire.Event{JobID: job.ID, ClientID: "A", Attempt: 0, Type: "status", Data: json.RawMessage(`{}`)})

	// Nothing but the sentinels reach the others.
	sentinel(t, b, a, alice, "A", job.ID)
	sentinel(t, b, a2, alice, "B", job.ID)
	sentinel(t, b, bobA, bob, "A", "job2")
}

func TestWSJobLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(alice, "?clientId=A")
	ws.expect("status")
	other := b.dial(alice, "?clientId=B")
	other.expect("status")
	bobs := b.dial(bob, "?clientId=A")
	bobs.expect("status")

	status := func(w *wsConn, n int) {
		t.Helper()
		m := w.expect("status")
		require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": `+itoa(n)+`}}}`, string(m.Data))
	}

	// queued: every socket of the participant hears the new count.
	rec := record(alice, 7, wire.StateQueued)
	rec.ClientID = "A"
	b.putRecord(rec)
	status(ws, 1)
	status(other, 1)

	// dispatched: same count, nothing sent. running: execution_start.
	rec.State = wire.StateDispatched
	b.putRecord(rec)
	rec.State, rec.Agent, rec.Slot, rec.Attempt = wire.StateRunning, "agent1", "0", 1
	rec.StartedAt = time.Now().UTC().Truncate(time.Millisecond)
	b.putRecord(rec)
	m := ws.expect("execution_start")
	require.JSONEq(t, `{"prompt_id": "`+rec.ID+`", "timestamp": `+itoa64(rec.StartedAt.UnixMilli())+`}`, string(m.Data))

	// Live events: a second execution_start is not repeated; executing
	// null waits for the final state.
	live := func(typ string, data string) {
		b.publishEvent("agent1", alice, wire.Event{JobID: rec.ID, ClientID: "A", Attempt: 1, Type: typ, Data: json.RawMessage(data)})
	}
	live("execution_start", `{"prompt_id": "`+rec.ID+`", "timestamp": 1}`)
	live("execution_cached", `{"nodes": [], "prompt_id": "`+rec.ID+`", "timestamp": 1}`)
	live("executing", `{"node": "10", "display_node": "10", "prompt_id": "`+rec.ID+`"}`)
	live("executed", `{"node": "10", "display_node": "10", "output": {"images": []}, "prompt_id": "`+rec.ID+`"}`)
	live("executing", `{"node": null, "prompt_id": "`+rec.ID+`"}`)
	ws.expect("execution_cached")
	require.Equal(t, "10", ws.expect("executing").data(t)["node"])
	require.Equal(t, "10", ws.expect("executed").data(t)["node"])

	// A socket reconnecting with the same client id learns what is running.
	again := b.dial(alice, "?clientId=A")
	again.expect("status")
	require.JSONEq(t, `{"node": "10"}`, string(again.expect("executing").Data))

	// succeeded: the output the live stream missed, success, status,
	// executing null, in that order; the executed it carried (to the old
	// socket of the same client) is not repeated.
	rec.State = wire.StateSucceeded
	rec.FinishedAt = time.Now().UTC().Truncate(time.Millisecond)
	rec.Outputs = map[string]json.RawMessage{
		"10": json.RawMessage(`{"images": []}`),
		"9":  json.RawMessage(`{"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}`),
	}
	b.putRecord(rec)
	// The new socket has the sid now; the old one only hears broadcasts.
	m = again.expect("executed")
	require.JSONEq(t, `{"node": "9", "display_node": "9", "output": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}, "prompt_id": "`+rec.ID+`"}`, string(m.Data))
	m = again.expect("execution_success")
	require.JSONEq(t, `{"prompt_id": "`+rec.ID+`", "timestamp": `+itoa64(rec.FinishedAt.UnixMilli())+`}`, string(m.Data))
	status(again, 0)
	require.JSONEq(t, `{"node": null, "prompt_id": "`+rec.ID+`"}`, string(again.expect("executing").Data))
	status(ws, 0)
	status(other, 0)

	// Late live events of a finished job and a repeated final record are
	// not relayed again.
	live("execution_success", `{"prompt_id": "`+rec.ID+`", "timestamp": 1}`)
	b.putRecord(rec)
	// Progress of a job without a client goes to all of the participant's
	// sockets (ComfyUI's broadcast): it must be the next thing each reads.
	b.publishEvent("agent1", alice, wire.Event{JobID: "job2", Attempt: 1, Type: "progress",
		Data: json.RawMessage(`{"value": 1, "max": 2, "prompt_id": "job2", "node": "1"}`)})
	for _, w := range []*wsConn{again, ws, other} {
		require.Equal(t, "job2", w.expect("progress").data(t)["prompt_id"])
	}
	sentinel(t, b, bobs, bob, "A", "job3")
}

// A job's first live events can reach the proxy before its record does
// (the agent starts the job the moment the broker answers its claim): the
// socket gets them, and a socket reconnecting later is still told which
// node runs.
func TestWSEventsBeforeTheRecord(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(alice, "?clientId=A")
	ws.expect("status")

	rec := record(alice, 8, wire.StateRunning)
	rec.ClientID, rec.Agent, rec.Slot, rec.Attempt = "A", "agent1", "0", 1
	rec.StartedAt = time.Now().UTC().Truncate(time.Millisecond)
	b.publishEvent("agent1", alice, wire.Event{JobID: rec.ID, ClientID: "A", Attempt: 1, Type: "executing",
		Data: json.RawMessage(`{"node": "3", "display_node": "3", "prompt_id": "` + rec.ID + `"}`)})
	require.Equal(t, "3", ws.expect("executing").data(t)["node"])

	b.putRecord(rec)
	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 1}}}`, string(ws.expect("status").Data))
	ws.expect("execution_start")
	again := b.dial(alice, "?clientId=A")
	again.expect("status")
	require.JSONEq(t, `{"node": "3"}`, string(again.expect("executing").Data))
}

func TestWSJobLifecycleSuccessOnLiveStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(alice, "?clientId=A")
	ws.expect("status")

	rec := record(alice, 3, wire.StateRunning)
	rec.ClientID = "A"
	b.putRecord(rec)
	ws.expect("status")
	ws.expect("execution_start")
	b.publishEvent("agent1", alice, wire.Event{JobID: rec.ID, ClientID: "A", Attempt: 1, Type: "execution_success",
		Data: json.RawMessage(`{"prompt_id": "` + rec.ID + `", "timestamp": 5}`)})
	require.JSONEq(t, `{"prompt_id": "`+rec.ID+`", "timestamp": 5}`, string(ws.expect("execution_success").Data))

	rec.State, rec.FinishedAt = wire.StateSucceeded, time.Now()
	b.putRecord(rec)
	// execution_success is not repeated.
	ws.expect("status")
	ws.expect("executing")
	sentinel(t, b, ws, alice, "A", "job2")
}

func TestWSJobFailures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(alice, "?clientId=A")
	ws.expect("status")

	run := func(mutate func(*wire.JobRecord)) wire.JobRecord {
		rec := record(alice, 3, wire.StateRunning)
		rec.ClientID = "A"
		b.putRecord(rec)
		ws.expect("status")
		ws.expect("execution_start")
		rec.FinishedAt = time.Now()
		mutate(&rec)
		b.putRecord(rec)
		return rec
	}
	tail := func(id string) {
		t.Helper()
		ws.expect("status")
		require.JSONEq(t, `{"node": null, "prompt_id": "`+id+`"}`, string(ws.expect("executing").Data))
	}

	// ComfyUI's error payload, as recorded.
	payload := `{"prompt_id": "P", "node_id": "2", "node_type": "ImageInvert", "executed": ["1"],
		"exception_message": "boom", "exception_type": "RuntimeError", "traceback": [], "current_inputs": {},
		"current_outputs": [], "timestamp": 9}`
	rec := run(func(r *wire.JobRecord) { r.State, r.Error = wire.StateFailed, json.RawMessage(payload) })
	require.JSONEq(t, payload, string(ws.expect("execution_error").Data))
	tail(rec.ID)

	// Failed without a ComfyUI error: synthesized from the reason.
	rec = run(func(r *wire.JobRecord) { r.State, r.Reason = wire.StateFailed, "gave up after 5 attempts" })
	d := ws.expect("execution_error").data(t)
	require.Equal(t, rec.ID, d["prompt_id"])
	require.Equal(t, "gave up after 5 attempts", d["exception_message"])
	tail(rec.ID)

	rec = run(func(r *wire.JobRecord) { r.State = wire.StateInterrupted })
	require.Equal(t, rec.ID, ws.expect("execution_interrupted").data(t)["prompt_id"])
	tail(rec.ID)

	// Cancelled before it ran: only the queue count changes.
	queued := record(alice, 4, wire.StateQueued)
	queued.ClientID = "A"
	b.putRecord(queued)
	ws.expect("status")
	queued.State, queued.FinishedAt = wire.StateCancelled, time.Now()
	b.putRecord(queued)
	ws.expect("status")
	sentinel(t, b, ws, alice, "A", "job2")
}

func itoa(n int) string     { return itoa64(int64(n)) }
func itoa64(n int64) string { b, _ := json.Marshal(n); return string(b) }
