package broker

import (
	"encoding/json"
	"github.com/atelier-run/atelier/internal/testutil"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// payloadJob is a job with every payload field set, as a UI submission.
func payloadJob(user string) wire.Job {
	return wire.Job{
		ID: uuid.NewString(), User: user, Pool: wire.DefaultPool,
		Prompt:           json.RawMessage(`{"1":{"class_type":"LoadImage","inputs":{"image":"cat.png"}},"2":{"class_type":"SaveImage","inputs":{"images":["1",0]}}}`),
		ExtraData:        json.RawMessage(`{"extra_pnginfo":{"workflow":{"nodes":[{"id":1,"type":"LoadImage"}]}}}`),
		ClientID:         "0123456789abcdef0123456789abcdef",
		OutputsToExecute: []string{"2"},
		Inputs:           []wire.InputFile{{Name: "cat.png", SHA256: "ab12", Size: 3}},
		SubmittedAt:      time.Now(),
	}
}

func (tb *testBundle) publishJob(t *testing.T, job wire.Job) {
	t.Helper()
	data, err := json.Marshal(job)
	require.NoError(t, err)
	_, err = tb.js.Publish(tb.ctx, wire.SubmitSubject(job.User), data, jetstream.WithMsgID(job.ID))
	require.NoError(t, err)
}

// entry is the broker's in-memory entry of a job (read on the core).
func (tb *testBundle) entry(t *testing.T, user, id string) (e jobEntry, ok bool) {
	t.Helper()
	require.NoError(t, tb.broker.do(tb.ctx, func() {
		if p := tb.broker.state.jobs[wire.JobKey(user, id)]; p != nil {
			e, ok = *p, true
		}
	}))
	return e, ok
}

func requirePayload(t *testing.T, want wire.Job, got wire.JobRecord) {
	t.Helper()
	require.JSONEq(t, string(want.Prompt), string(got.Prompt))
	require.JSONEq(t, string(want.ExtraData), string(got.ExtraData))
	require.Equal(t, want.ClientID, got.ClientID)
	require.Equal(t, want.OutputsToExecute, got.OutputsToExecute)
	require.Equal(t, want.Inputs, got.Inputs)
}

// A queued job keeps only its scheduling fields in memory; its JOBS
// record keeps the payload through every write (a bump while it waits,
// the dispatch, the claim, the end), and the claim hands the agent the
// payload exactly as submitted, also after a broker restart.
func TestQueuedJobPayloadStaysInJOBS(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	job := payloadJob("user001")
	tb.publishJob(t, job)
	requirePayload(t, job, tb.awaitState(t, "user001", job.ID, wire.StateQueued))

	testutil.Eventually(t, func() bool {
		e, ok := tb.entry(t, "user001", job.ID)
		return ok && e.light
	}, "the queued job was not made light")
	e, _ := tb.entry(t, "user001", job.ID)
	require.Nil(t, e.rec.Prompt)
	require.Nil(t, e.rec.ExtraData)
	require.Empty(t, e.rec.ClientID)
	require.Nil(t, e.rec.Inputs)

	// A write while it waits (a bump) keeps the payload in JOBS, and the
	// job stays light.
	var bumped wire.APIReply
	tb.api(t, wire.OpBump, wire.BumpRequest{Caller: instructor, User: "user001", JobID: job.ID}, &bumped)
	require.Empty(t, bumped.Error)
	r := tb.record(t, "user001", job.ID)
	require.True(t, r.Bumped)
	requirePayload(t, job, r)
	e, _ = tb.entry(t, "user001", job.ID)
	require.True(t, e.light)

	// After a restart the job is taken in again from SUBMIT and JOBS, and
	// waits light as before.
	tb.stop()
	tb.start(t)
	testutil.Eventually(t, func() bool {
		e, ok := tb.entry(t, "user001", job.ID)
		return ok && e.light
	}, "the job was not taken in light after the restart")

	tb.heartbeat(t, "a1", "boot1", 1)
	requirePayload(t, job, tb.awaitState(t, "user001", job.ID, wire.StateDispatched))
	e, _ = tb.entry(t, "user001", job.ID)
	require.False(t, e.light, "a job holding a slot keeps its payload for the claim")

	reply := tb.claim(t, wire.ClaimRequest{JobID: job.ID, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"})
	require.Equal(t, wire.ClaimGo, reply.Action)
	require.JSONEq(t, string(job.Prompt), string(reply.Job.Prompt))
	require.JSONEq(t, string(job.ExtraData), string(reply.Job.ExtraData))
	require.Equal(t, job.ClientID, reply.Job.ClientID)
	require.Equal(t, job.OutputsToExecute, reply.Job.OutputsToExecute)
	require.Equal(t, job.Inputs, reply.Job.Inputs)
	requirePayload(t, job, tb.awaitState(t, "user001", job.ID, wire.StateRunning))

	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: job.ID, User: "user001", Agent: "a1", Attempt: 1})
	requirePayload(t, job, tb.awaitState(t, "user001", job.ID, wire.StateSucceeded))
}

// A job taken in while a slot is free is dispatched with the payload it
// arrived with; a cancelled queued job's history keeps its workflow.
func TestPayloadOfDispatchedAndCancelledJobs(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.heartbeat(t, "a1", "boot1", 1)
	first := payloadJob("user001")
	tb.publishJob(t, first)
	tb.awaitState(t, "user001", first.ID, wire.StateDispatched)
	e, _ := tb.entry(t, "user001", first.ID)
	require.False(t, e.light)
	requirePayload(t, first, e.rec)

	waiting := payloadJob("user002") // no free slot: it waits
	tb.publishJob(t, waiting)
	tb.awaitState(t, "user002", waiting.ID, wire.StateQueued)
	reply := tb.cancel(t, wire.CancelRequest{Caller: wire.Caller{User: "user002", Role: wire.RoleParticipant}, JobIDs: []string{waiting.ID}})
	require.Equal(t, []string{waiting.ID}, reply.Affected)
	requirePayload(t, waiting, tb.awaitState(t, "user002", waiting.ID, wire.StateCancelled))
}
