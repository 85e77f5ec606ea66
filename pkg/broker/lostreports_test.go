package broker

import (
	"encoding/json"
	"testing"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// A prefetched job's "started" report is lost (an embedded server killed
// before it wrote it): the attempt's output and end still apply, the end
// implying the start, instead of being ignored as a stale attempt's, which
// left the job held by an attempt that had ended.
func TestEndOfAPrefetchedJobWithoutItsStartApplies(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)
	_, msg := tb.fetchTicket(t)
	reply := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1", Prefetch: true})
	require.Equal(t, wire.ClaimGo, reply.Action)
	require.Equal(t, wire.StateDispatched, tb.record(t, "user001", id).State, "held, not started")

	tb.report(t, wire.Report{Kind: wire.ReportOutput, JobID: id, User: "user001", Agent: "a1", Attempt: 1, Node: "9", Output: []byte(`{"images":[]}`)})
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 1})
	r := tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.False(t, r.StartedAt.IsZero())
	require.Contains(t, r.Outputs, "9")
	require.NoError(t, msg.Ack())

	// Another agent's report of the job is still a stale attempt's.
	id2 := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id2, wire.StateDispatched)
	_, msg2 := tb.fetchTicket(t)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id2, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1", Prefetch: true}).Action)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id2, User: "user001", Agent: "a2", Attempt: 1})
	tb.report(t, wire.Report{Kind: wire.ReportFailed, JobID: id2, User: "user001", Agent: "a1", Attempt: 1, Reason: "boom"})
	require.Equal(t, "boom", tb.awaitState(t, "user001", id2, wire.StateFailed).Reason)
	require.NoError(t, msg2.Ack())
}

// The end of an attempt is lost while its acknowledgement of the ticket
// is not (the report published to an embedded server killed before it
// wrote it, the ack after it): the holder no longer lists the job, no
// report is left in REPORTS, and the job, looked at twice, is given back
// and released again, so it runs and ends.
func TestJobWhoseEndWasLostIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb, hbs, id := setupOrphan(t)
	hbs.hold(wire.HeldKey("user001", id))
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	// The run ends: its report is lost, its ack is not.
	require.NoError(t, msg.DoubleAck(tb.ctx))
	hbs.hold()

	tk, msg = tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
	reply := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"})
	require.Equal(t, wire.ClaimGo, reply.Action)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: reply.Attempt})
	tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.NoError(t, msg.Ack())
}

// The record of a claim is lost (an embedded server killed after the
// broker answered the claim "go" and before it wrote the record): after
// the restart the job looks dispatched to nobody, attempt 0. The agent's
// reports of attempt 1 prove the claim was made: they apply, and the job
// ends once, instead of its reports being ignored and the job running a
// second time.
func TestReportsOfAClaimWhoseRecordWasLostApply(t *testing.T) {
	t.Parallel()
	tb := setupOnExternalNATS(t)
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	before := tb.awaitState(t, "user001", id, wire.StateDispatched)
	_, msg := tb.fetchTicket(t)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	tb.awaitState(t, "user001", id, wire.StateRunning)

	tb.stopBroker(t)
	data, err := json.Marshal(before)
	require.NoError(t, err)
	_, err = tb.jobs.Put(tb.ctx, wire.JobKey("user001", id), data)
	require.NoError(t, err)
	tb.start(t)

	tb.report(t, wire.Report{Kind: wire.ReportStarted, JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Attempt: 1})
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Attempt: 1})
	r := tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.Equal(t, 1, r.Attempt)
	require.Equal(t, "a1", r.Agent)
	require.NoError(t, msg.Ack())

	// A report of a later attempt than the next is no such proof. (The
	// broker applies reports in order: once the next one applied, the
	// first had been looked at.)
	tb.heartbeat(t, "a1", "boot1", 1)
	id2 := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id2, wire.StateDispatched)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id2, User: "user001", Agent: "a1", Attempt: 2})
	tb.report(t, wire.Report{Kind: wire.ReportStarted, JobID: id2, User: "user001", Agent: "a1", Attempt: 1})
	r = tb.awaitState(t, "user001", id2, wire.StateRunning)
	require.Equal(t, 1, r.Attempt, "the attempt-2 report was ignored, the attempt-1 one taken as its claim")
}
