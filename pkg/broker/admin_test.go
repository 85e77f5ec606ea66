package broker

import (
	"encoding/json"
	"github.com/atelier-run/atelier/internal/testutil"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// adminCall makes one admin API request; token "" sends none.
func (tb *testBundle) adminCall(t *testing.T, method, op, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(tb.ctx, method, tb.broker.HTTPURL()+"/api/admin/"+op, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// Every operation of the HTTP admin API: refused without the token (or
// with a wrong one) and changing nothing; with it, doing what it says,
// with the status code of its outcome.
func TestAdminHTTPEveryOperation(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	token := tb.broker.adminToken
	// A live agent answering control requests (drain, undrain, interrupt).
	var (
		mu     sync.Mutex
		drains []string
	)
	seen := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(drains) }
	sub, err := tb.nc.Subscribe(wire.ControlSubject("a1"), func(m *nats.Msg) {
		var req wire.ControlRequest
		_ = json.Unmarshal(m.Data, &req)
		mu.Lock()
		drains = append(drains, req.Op)
		mu.Unlock()
		data, _ := json.Marshal(wire.ControlReply{Done: true})
		_ = m.Respond(data)
		if req.Op == wire.CtlInterrupt {
			tb.report(t, wire.Report{Kind: wire.ReportInterrupted, JobID: req.JobID, User: req.User, Agent: "a1", Attempt: 1})
		}
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, tb.nc.Flush())

	tb.heartbeat(t, "a1", "boot1", 1)
	running := tb.submit(t, "user001")
	tb.awaitState(t, "user001", running, wire.StateDispatched)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, running, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: running, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	tb.awaitState(t, "user001", running, wire.StateRunning)
	queued := tb.submit(t, "user002")
	tb.awaitState(t, "user002", queued, wire.StateQueued) // the one slot is taken

	ops := []struct{ method, op, body string }{
		{"POST", "pause", `{}`}, {"POST", "resume", `{}`}, {"POST", "policy", `{"policy": "fifo"}`},
		{"POST", "bump", `{"user": "user002", "job_id": "` + queued + `"}`},
		{"POST", "cancel", `{"user": "user002", "job_ids": ["` + queued + `"]}`},
		{"POST", "interrupt", `{"user": "user001"}`}, {"POST", "forget", `{"user": "user001", "all": true}`},
		{"POST", "drain", `{"agent": "a1"}`}, {"POST", "undrain", `{"agent": "a1"}`},
		{"POST", "queues", `{}`}, {"GET", "queues", ``}, {"GET", "usage", ``},
	}
	for _, o := range ops {
		for _, tok := range []string{"", "wrong-token-0123456789"} {
			code, body := tb.adminCall(t, o.method, o.op, tok, o.body)
			require.Equal(t, http.StatusUnauthorized, code, "%s %s without the token: %s", o.method, o.op, body)
		}
	}
	st, err := tb.broker.Status(tb.ctx)
	require.NoError(t, err)
	require.False(t, st.Paused)
	require.Equal(t, "round-robin", st.Policy)
	require.Empty(t, seen(), "nothing reached the agent")
	require.Equal(t, wire.StateQueued, tb.record(t, "user002", queued).State)
	require.Equal(t, wire.StateRunning, tb.record(t, "user001", running).State)

	call := func(method, op, body string, want int) []byte {
		t.Helper()
		code, data := tb.adminCall(t, method, op, token, body)
		require.Equal(t, want, code, "%s %s: %s", method, op, data)
		return data
	}
	status := func() Status {
		t.Helper()
		st, err := tb.broker.Status(tb.ctx)
		require.NoError(t, err)
		return st
	}

	call("POST", "pause", `{}`, http.StatusOK)
	require.True(t, status().Paused)
	call("POST", "resume", `{}`, http.StatusOK)
	require.False(t, status().Paused)
	call("POST", "policy", `{"policy": "priority"}`, http.StatusOK)
	require.Equal(t, "priority", status().Policy)
	call("POST", "policy", `{"policy": "lottery"}`, http.StatusBadRequest)
	call("POST", "policy", `not json`, http.StatusBadRequest)

	call("POST", "bump", `{"user": "user002", "job_id": "`+queued+`"}`, http.StatusOK)
	require.True(t, tb.record(t, "user002", queued).Bumped)
	call("POST", "bump", `{"user": "user002", "job_id": "no-such-job"}`, http.StatusNotFound)

	var q wire.QueuesReply
	require.NoError(t, json.Unmarshal(call("GET", "queues", ``, http.StatusOK), &q))
	require.Len(t, q.Jobs, 2)
	require.Equal(t, running, q.Jobs[0].ID, "running first")
	require.Equal(t, queued, q.Jobs[1].ID)
	require.Equal(t, 1, q.Jobs[1].Position)
	require.NoError(t, json.Unmarshal(call("POST", "queues", `{}`, http.StatusOK), &q))
	require.Len(t, q.Jobs, 2)

	var cr wire.CancelReply
	require.NoError(t, json.Unmarshal(call("POST", "cancel", `{"user": "user002", "job_ids": ["`+queued+`"]}`, http.StatusOK), &cr))
	require.Equal(t, []string{queued}, cr.Affected)
	tb.awaitState(t, "user002", queued, wire.StateCancelled)

	require.NoError(t, json.Unmarshal(call("POST", "interrupt", `{"user": "user001"}`, http.StatusOK), &cr))
	require.Equal(t, []string{running}, cr.Affected)
	tb.awaitState(t, "user001", running, wire.StateInterrupted)
	require.NoError(t, msg.DoubleAck(tb.ctx))

	require.NoError(t, json.Unmarshal(call("POST", "forget", `{"user": "user001", "all": true}`, http.StatusOK), &cr))
	require.Equal(t, []string{running}, cr.Affected)
	call("POST", "forget", `{"user": "../etc", "all": true}`, http.StatusBadRequest)

	call("POST", "drain", `{"agent": "a1"}`, http.StatusOK)
	call("POST", "undrain", `{"agent": "a1"}`, http.StatusOK)
	require.Equal(t, []string{wire.CtlInterrupt, wire.CtlDrain, wire.CtlUndrain}, seen())
	call("POST", "drain", `{"agent": "nobody"}`, http.StatusNotFound)
	call("POST", "drain", `{"agent": "bad agent!"}`, http.StatusBadRequest)

	var usage json.RawMessage
	require.NoError(t, json.Unmarshal(call("GET", "usage", ``, http.StatusOK), &usage))
	call("POST", "lottery", `{}`, http.StatusBadRequest)
}

// GET /api/status needs no login, so without the admin token it names no
// participant (neither in the users nor on a slot); with it, it does.
func TestStatusRouteNamesParticipantsOnlyToTheAdmin(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateQueued)
	hb := wire.Heartbeat{Agent: "a1", Pool: wire.DefaultPool, Boot: "b", Slots: []wire.SlotStatus{{ID: "gpu0", State: wire.SlotBusy, JobID: "job-x", User: "user007"}}}
	data, _ := json.Marshal(hb)
	require.NoError(t, tb.nc.Publish(wire.HeartbeatSubject("a1"), data))
	testutil.Eventually(t, func() bool {
		st, err := tb.broker.Status(tb.ctx)
		return err == nil && len(st.Agents) == 1
	}, "the agent is not in the status")

	get := func(token string) (Status, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(tb.ctx, http.MethodGet, tb.broker.HTTPURL()+"/api/status", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		body, _ := io.ReadAll(resp.Body)
		var st Status
		require.NoError(t, json.Unmarshal(body, &st))
		return st, string(body)
	}
	st, body := get("")
	require.NotContains(t, body, "user001")
	require.NotContains(t, body, "user007")
	require.NotContains(t, body, "job-x")
	require.Empty(t, st.Users)
	require.Equal(t, 1, st.Participants)
	require.Equal(t, 1, st.Queued[wire.DefaultPool]+st.InFlight[wire.DefaultPool])
	require.Len(t, st.Agents, 1)

	st, _ = get(tb.broker.adminToken)
	require.Equal(t, 1, st.Users["user001"].Queued+st.Users["user001"].Running)
	require.Equal(t, "user007", st.Agents[0].Slots[0].User)
}
