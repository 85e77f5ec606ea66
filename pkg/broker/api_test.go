package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/atelier-run/atelier/internal/testutil"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

var (
	participant = wire.Caller{User: "user001", Role: wire.RoleParticipant}
	instructor  = wire.Caller{User: "teacher", Role: wire.RoleInstructor}
)

func (tb *testBundle) api(t *testing.T, op string, req, reply any) {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := tb.nc.Request(wire.BrokerAPISubject(op), data, 10*time.Second)
	require.NoError(t, err)
	reflect.ValueOf(reply).Elem().SetZero() // replies are reused across calls
	require.NoError(t, json.Unmarshal(m.Data, reply))
}

func (tb *testBundle) cancel(t *testing.T, req wire.CancelRequest) wire.CancelReply {
	t.Helper()
	var r wire.CancelReply
	tb.api(t, wire.OpCancel, req, &r)
	return r
}

func (tb *testBundle) requireSubmitGone(t *testing.T, r wire.JobRecord) {
	t.Helper()
	tb.requireMsgGone(t, wire.StreamSubmit, r.SubmitSeq, "a final job leaves SUBMIT")
}

// requireMsgGone waits for the broker to remove the message at seq from
// the stream. It does so after it wrote the job's record, which a test
// polling JOBS may see first.
func (tb *testBundle) requireMsgGone(t *testing.T, stream string, seq uint64, msg string) {
	t.Helper()
	st, err := tb.js.Stream(tb.ctx, stream)
	require.NoError(t, err)
	testutil.Eventually(t, func() bool {
		_, err := st.GetMsg(tb.ctx, seq)
		return errors.Is(err, jetstream.ErrMsgNotFound)
	}, "%s (%s seq %d)", msg, stream, seq)
}

func TestCancelAtEveryStage(t *testing.T) {
	t.Parallel()
	tb := setup(t)

	// Queued (no agent yet).
	queued := tb.submit(t, "user001")
	tb.awaitState(t, "user001", queued, wire.StateQueued)
	reply := tb.cancel(t, wire.CancelRequest{Caller: participant, User: "user001", JobIDs: []string{queued}})
	require.Empty(t, reply.Error)
	require.Equal(t, []string{queued}, reply.Affected)
	r := tb.awaitState(t, "user001", queued, wire.StateCancelled)
	require.Contains(t, r.Reason, "cancelled by user001")
	tb.requireSubmitGone(t, r)

	// Dispatched: the ticket is out, not claimed. The claim is skipped.
	tb.heartbeat(t, "a1", "boot1", 1)
	dispatched := tb.submit(t, "user001")
	tb.awaitState(t, "user001", dispatched, wire.StateDispatched)
	reply = tb.cancel(t, wire.CancelRequest{Caller: participant, User: "user001", JobIDs: []string{dispatched}})
	require.Equal(t, []string{dispatched}, reply.Affected)
	tb.awaitState(t, "user001", dispatched, wire.StateCancelled)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, dispatched, tk.JobID)
	require.Equal(t, wire.ClaimSkip, tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	require.NoError(t, msg.Ack())

	// Running: the broker asks the agent to interrupt; the agent's
	// report ends the job interrupted, exactly once.
	running := tb.submit(t, "user001")
	tb.awaitState(t, "user001", running, wire.StateDispatched)
	tk, msg = tb.fetchTicket(t)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	ctl, err := tb.nc.Subscribe(wire.ControlSubject("a1"), func(m *nats.Msg) {
		var req wire.ControlRequest
		_ = json.Unmarshal(m.Data, &req)
		data, _ := json.Marshal(wire.ControlReply{Done: req.Op == wire.CtlInterrupt && req.JobID == running})
		_ = m.Respond(data)
		tb.report(t, wire.Report{Kind: wire.ReportInterrupted, JobID: running, User: "user001", Agent: "a1", Attempt: 1})
	})
	require.NoError(t, err)
	reply = tb.cancel(t, wire.CancelRequest{Caller: participant, User: "user001", JobIDs: []string{running}})
	require.Equal(t, []string{running}, reply.Affected)
	tb.awaitState(t, "user001", running, wire.StateInterrupted)
	require.NoError(t, ctl.Unsubscribe())
	require.NoError(t, msg.DoubleAck(tb.ctx))
	// A late success of that attempt changes nothing.
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: running, User: "user001", Agent: "a1", Attempt: 1})

	// Running on an agent that no longer answers: cancelled at once.
	orphan := tb.submit(t, "user001")
	tb.awaitState(t, "user001", orphan, wire.StateDispatched)
	tk, _ = tb.fetchTicket(t)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	reply = tb.cancel(t, wire.CancelRequest{Caller: instructor, JobIDs: []string{orphan}})
	require.Equal(t, []string{orphan}, reply.Affected)
	tb.awaitState(t, "user001", orphan, wire.StateCancelled)

	st, err := tb.broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 3, st.Finished[wire.StateCancelled])
	require.Equal(t, 1, st.Finished[wire.StateInterrupted])
	require.Zero(t, st.Finished[wire.StateSucceeded])
}

func TestParticipantsActOnlyOnTheirOwnJobs(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	other := tb.submit(t, "user002")
	tb.awaitState(t, "user002", other, wire.StateQueued)

	reply := tb.cancel(t, wire.CancelRequest{Caller: participant, User: "user002", JobIDs: []string{other}})
	require.Equal(t, "forbidden", reply.Code)
	// Naming only the id finds nothing of theirs.
	reply = tb.cancel(t, wire.CancelRequest{Caller: participant, JobIDs: []string{other}})
	require.Empty(t, reply.Affected)
	require.Equal(t, wire.StateQueued, tb.record(t, "user002", other).State)

	var r wire.APIReply
	tb.api(t, wire.OpPause, wire.PauseRequest{Caller: participant}, &r)
	require.Equal(t, "forbidden", r.Code)
	tb.api(t, wire.OpBump, wire.BumpRequest{Caller: participant, User: "user002", JobID: other}, &r)
	require.Equal(t, "forbidden", r.Code)

	var q wire.QueuesReply
	tb.api(t, wire.OpQueues, wire.QueuesRequest{Caller: participant}, &q)
	require.Empty(t, q.Jobs, "a participant lists only their own jobs")
	tb.api(t, wire.OpQueues, wire.QueuesRequest{Caller: instructor}, &q)
	require.Len(t, q.Jobs, 1)
	require.Equal(t, 1, q.Jobs[0].Position)
}

func TestPauseBumpPolicyAndForget(t *testing.T) {
	t.Parallel()
	tb := setupWithSignals(t, nil, withHousekeeping)
	var r wire.APIReply
	tb.api(t, wire.OpPause, wire.PauseRequest{Caller: instructor}, &r)
	require.Empty(t, r.Error)
	tb.api(t, wire.OpPolicy, wire.PolicyRequest{Caller: instructor, Policy: "fifo"}, &r)
	require.Empty(t, r.Error)
	tb.api(t, wire.OpPolicy, wire.PolicyRequest{Caller: instructor, Policy: "lottery"}, &r)
	require.Equal(t, "invalid", r.Code)

	tb.heartbeat(t, "a1", "boot1", 1)
	first := tb.submit(t, "user001")
	second := tb.submit(t, "user002")
	tb.awaitState(t, "user001", first, wire.StateQueued)
	tb.awaitState(t, "user002", second, wire.StateQueued)
	tb.awaitHousekeeping(t) // its dispatch retries are paused too
	tb.broker.testSignals.ticketReleased.RequireEmpty(t)
	require.Equal(t, wire.StateQueued, tb.record(t, "user001", first).State, "paused: nothing is dispatched")

	// Pause and policy survive a restart.
	tb.stop()
	tb.start(t)
	st, err := tb.broker.Status(tb.ctx)
	require.NoError(t, err)
	require.True(t, st.Paused)
	require.Equal(t, "fifo", st.Policy)

	// The instructor bumps the later job; under priority it goes first.
	tb.api(t, wire.OpPolicy, wire.PolicyRequest{Caller: instructor, Policy: "priority"}, &r)
	require.Empty(t, r.Error)
	tb.api(t, wire.OpBump, wire.BumpRequest{Caller: instructor, User: "user002", JobID: second}, &r)
	require.Empty(t, r.Error)
	require.True(t, tb.record(t, "user002", second).Bumped)
	tb.heartbeat(t, "a1", "boot1", 1)
	tb.api(t, wire.OpResume, wire.PauseRequest{Caller: instructor}, &r)
	require.Empty(t, r.Error)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, second, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: second, User: "user002", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: second, User: "user002", Agent: "a1", Attempt: 1})
	tb.awaitState(t, "user002", second, wire.StateSucceeded)
	require.NoError(t, msg.DoubleAck(tb.ctx))

	// Forget removes a final job from the history, not an unfinished one.
	var fr wire.CancelReply
	tb.api(t, wire.OpForget, wire.ForgetRequest{Caller: wire.Caller{User: "user002", Role: wire.RoleParticipant}, User: "user002", All: true}, &fr)
	require.Equal(t, []string{second}, fr.Affected)
	_, err = tb.jobs.Get(tb.ctx, wire.JobKey("user002", second))
	require.ErrorIs(t, err, jetstream.ErrKeyNotFound)
	tb.api(t, wire.OpForget, wire.ForgetRequest{Caller: participant, User: "user001", JobIDs: []string{first}}, &fr)
	require.Empty(t, fr.Affected)
}

func TestAdminHTTPNeedsTheToken(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	url := tb.broker.HTTPURL() + "/api/admin/pause"
	resp, err := http.Post(url, "application/json", strings.NewReader(`{}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(`{"caller": {"user": "x", "role": "participant"}}`)))
	req.Header.Set("Authorization", "Bearer "+tb.broker.adminToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the token's holder is the admin, whatever the body claims")
	st, err := tb.broker.Status(tb.ctx)
	require.NoError(t, err)
	require.True(t, st.Paused)

	req, _ = http.NewRequest(http.MethodPost, tb.broker.HTTPURL()+"/api/admin/bump", strings.NewReader(`{"user": "u", "job_id": "nope"}`))
	req.Header.Set("Authorization", "Bearer "+tb.broker.adminToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// Under the priority policy the instructor's own jobs (the demo) go first.
func TestInstructorJobsGoFirstUnderPriority(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	reg, err := registry.Open(registry.Config{Path: datalayout.New(tb.dir).RegistryPath(), BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	_, err = reg.Create(tb.ctx, registry.User{ID: "teacher", Role: registry.RoleInstructor}, "pw-teacher")
	require.NoError(t, err)

	var r wire.APIReply
	tb.api(t, wire.OpPolicy, wire.PolicyRequest{Caller: instructor, Policy: "priority"}, &r)
	require.Empty(t, r.Error)
	first := tb.submit(t, "user001")
	demo := tb.submit(t, "teacher")
	tb.awaitState(t, "user001", first, wire.StateQueued)
	require.True(t, tb.awaitState(t, "teacher", demo, wire.StateQueued).Bumped)

	tb.heartbeat(t, "a1", "boot1", 1)
	tk, _ := tb.fetchTicket(t)
	require.Equal(t, demo, tk.JobID)
}
