package broker

import (
	"encoding/json"
	"github.com/atelier-run/atelier/internal/testutil"
	"sync/atomic"
	"testing"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// fakeControl answers the agent's control subject the way an agent does
// and counts the interrupts it received for each job.
type fakeControl struct {
	held       atomic.Bool // whether "the agent" holds the job
	interrupts atomic.Int32
}

func (tb *testBundle) control(t *testing.T, agent string) *fakeControl {
	t.Helper()
	fc := &fakeControl{}
	sub, err := tb.nc.Subscribe(wire.ControlSubject(agent), func(m *nats.Msg) {
		var req wire.ControlRequest
		_ = json.Unmarshal(m.Data, &req)
		if req.Op == wire.CtlInterrupt {
			fc.interrupts.Add(1)
		}
		data, _ := json.Marshal(wire.ControlReply{Done: fc.held.Load()})
		_ = m.Respond(data)
	})
	require.NoError(t, err)
	require.NoError(t, tb.nc.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return fc
}

// The window between a claim and the agent registering the run: the job is
// running for the broker, but the agent answers the interrupt "no slot of
// mine holds it". That must not count as stopped: the job is cancelled at
// once, exactly once; the attempt's later reports (it ran after all) do not
// bring it back, they make the broker interrupt it again; and a restart
// keeps it cancelled.
func TestCancelRightAfterAClaimIsNotLost(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	fc := tb.control(t, "a1")
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	tb.awaitState(t, "user001", id, wire.StateRunning)

	reply := tb.cancel(t, wire.CancelRequest{Caller: participant, User: "user001", JobIDs: []string{id}})
	require.Empty(t, reply.Error)
	require.Equal(t, []string{id}, reply.Affected)
	r := tb.awaitState(t, "user001", id, wire.StateCancelled)
	require.Contains(t, r.Reason, "not running on its agent")
	require.EqualValues(t, 1, fc.interrupts.Load())
	tb.requireSubmitGone(t, r)

	// The run registers after all and reports: an output makes the broker
	// interrupt it again; its success is ignored.
	fc.held.Store(true)
	tb.report(t, wire.Report{Kind: wire.ReportOutput, JobID: id, User: "user001", Agent: "a1", Attempt: 1,
		Node: "9", Output: json.RawMessage(`{"images":[]}`)})
	testutil.Eventually(t, func() bool { return fc.interrupts.Load() == 2 }, "the stopped attempt was not interrupted again")
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 1})
	require.NoError(t, msg.DoubleAck(tb.ctx))
	// Reports are applied in order: one sent after it proves the success
	// was handled.
	marker := tb.submit(t, "user002")
	tb.awaitState(t, "user002", marker, wire.StateDispatched)
	require.Equal(t, wire.StateCancelled, tb.record(t, "user001", id).State)

	tb.stop()
	tb.start(t)
	require.Equal(t, wire.ClaimSkip, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	require.Equal(t, wire.StateCancelled, tb.record(t, "user001", id).State)
}

// A running job whose agent took the interrupt but died before reporting
// is not run again by the next claim of its ticket, nor by a release: it
// ends, once.
func TestStoppedJobIsNotRunAgain(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	fc := tb.control(t, "a1")
	fc.held.Store(true)
	tb.heartbeat(t, "a1", "boot1", 2)

	// The agent restarts (a new boot) and claims the job again.
	died := claimRunningAs(t, tb, "boot1")
	reply := tb.cancel(t, wire.CancelRequest{Caller: instructor, JobIDs: []string{died}})
	require.Equal(t, []string{died}, reply.Affected)
	require.Equal(t, wire.StateRunning, tb.record(t, "user001", died).State, "the agent took the interrupt: its report ends the job")
	tb.heartbeat(t, "a1", "boot2", 2)
	skip := tb.claim(t, wire.ClaimRequest{JobID: died, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot2"})
	require.Equal(t, wire.ClaimSkip, skip.Action)
	r := tb.awaitState(t, "user001", died, wire.StateCancelled)
	require.Contains(t, r.Reason, "cancelled by teacher")

	// The agent gives the job back instead of reporting it interrupted.
	released := claimRunningAs(t, tb, "boot2")
	reply = tb.cancel(t, wire.CancelRequest{Caller: participant, User: "user001", JobIDs: []string{released}})
	require.Equal(t, []string{released}, reply.Affected)
	tb.report(t, wire.Report{Kind: wire.ReportReleased, JobID: released, User: "user001", Agent: "a1", Attempt: 1, Reason: "draining"})
	r = tb.awaitState(t, "user001", released, wire.StateInterrupted)
	require.Contains(t, r.Reason, "cancelled by user001")

	st, err := tb.broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Finished[wire.StateCancelled])
	require.Equal(t, 1, st.Finished[wire.StateInterrupted])
}

func claimRunningAs(t *testing.T, tb *testBundle, boot string) string {
	t.Helper()
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)
	tk, _ := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: boot}).Action)
	tb.awaitState(t, "user001", id, wire.StateRunning)
	return id
}
