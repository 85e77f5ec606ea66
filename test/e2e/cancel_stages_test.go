package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// Cancel at every stage, through the real proxy, broker, agent and a
// ComfyUI simulator process, from each of the participant's routes and
// from the instructor. With one GPU, the agent's prefetch and one ticket of
// broker prefetch, four jobs stand at the four stages at once: running (in
// ComfyUI), prefetched (claimed by the busy slot and waiting in ComfyUI's
// own queue), dispatched (a ticket out that no slot took) and queued. Each
// ends cancelled, or interrupted if it ran, exactly once: the simulator
// ran only the running ones, once each, nothing is left in its queue, and
// nothing comes back later.
func TestCancelAtEveryStageThroughTheSystem(t *testing.T) {
	t.Parallel()
	s := startCore(t, []string{"user001"}, "--prefetch", "1")
	sims := s.startSims(1, 20*time.Millisecond)
	s.startAgent("agent", "--id", "e2e-cancel", "--runtime", "external", "--comfy-urls", sims[0],
		"--scratch", filepath.Join(t.TempDir(), "scratch"), "--retry-delay", "200ms")
	s.awaitSlots("e2e-cancel", 1)
	jobs := s.jobsKV()
	p := s.participant("user001")
	wf := workflow(t, "txt2img.json")

	await := func(what, id string, ok func(wire.JobRecord) bool) {
		t.Helper()
		var r wire.JobRecord
		require.Eventually(t, func() bool { r = jobRecord(t, jobs, "user001", id); return ok(r) }, testutil.WaitTimeout(), 20*time.Millisecond,
			"%s: job %s never got there", what, id)
	}
	type stages struct{ running, prefetched, dispatched, queued string }
	seed := 0
	stage := func(round string) stages {
		t.Helper()
		q := func(name string, n int) string {
			seed++
			return p.queueTagged(steps(wf, n, seed), round+"/"+name)
		}
		var st stages
		st.running = q("running", 2000) // 40 s of sampling: it is interrupted long before
		await("running", st.running, func(r wire.JobRecord) bool { return r.State == wire.StateRunning })
		st.prefetched = q("prefetched", 5)
		await("prefetched", st.prefetched, func(r wire.JobRecord) bool { return r.State == wire.StateDispatched && r.Agent != "" })
		st.dispatched = q("dispatched", 5)
		await("dispatched", st.dispatched, func(r wire.JobRecord) bool { return r.State == wire.StateDispatched && r.Releases == 1 })
		st.queued = q("queued", 5)
		await("queued", st.queued, func(r wire.JobRecord) bool { return r.State == wire.StateQueued })
		// They are where they should be: the slot holds two, one ticket
		// waits. (That none of the three ever runs, the end checks.)
		require.Equal(t, wire.StateRunning, jobRecord(t, jobs, "user001", st.running).State)
		require.Equal(t, "", jobRecord(t, jobs, "user001", st.dispatched).Agent, "no slot took the extra ticket")
		require.Equal(t, wire.StateQueued, jobRecord(t, jobs, "user001", st.queued).State)
		return st
	}
	ended := func(st stages) {
		t.Helper()
		for _, id := range []string{st.queued, st.dispatched, st.prefetched} {
			await("cancelled", id, func(r wire.JobRecord) bool { return r.State == wire.StateCancelled })
		}
		await("interrupted", st.running, func(r wire.JobRecord) bool { return r.State == wire.StateInterrupted })
	}
	post := func(path, body string) []byte {
		t.Helper()
		var b []byte
		if body != "" {
			b = []byte(body)
		}
		code, resp := p.do(http.MethodPost, path, b)
		require.Equal(t, http.StatusOK, code, "POST %s: %s", path, resp)
		return resp
	}

	// ComfyUI's queue delete takes what waits (it leaves the running job
	// alone); /interrupt stops the running one.
	ui := stage("ui")
	post("/queue", fmt.Sprintf(`{"delete": [%q, %q, %q, %q]}`, ui.queued, ui.dispatched, ui.prefetched, ui.running))
	for _, id := range []string{ui.queued, ui.dispatched, ui.prefetched} {
		await("cancelled", id, func(r wire.JobRecord) bool { return r.State == wire.StateCancelled })
	}
	require.Equal(t, wire.StateRunning, jobRecord(t, jobs, "user001", ui.running).State, "queue delete leaves the running job alone")
	post("/interrupt", fmt.Sprintf(`{"prompt_id": %q}`, ui.running))
	ended(ui)

	// The jobs API cancels at any stage.
	api := stage("api")
	for _, id := range []string{api.queued, api.dispatched, api.prefetched, api.running} {
		require.JSONEq(t, `{"cancelled": true}`, string(post("/api/jobs/"+id+"/cancel", "")))
	}
	ended(api)

	// The instructor cancels all four with one command.
	inst := stage("instructor")
	out := s.mustCLI("cancel", "user001", inst.queued, inst.dispatched, inst.prefetched, inst.running)
	require.Contains(t, out, "cancelled or interrupted: ")
	ended(inst)

	// The GPU is free for the next job; once it ran, the slot has been
	// through every ticket released before it.
	next := p.queueTagged(steps(wf, 5, 99), "after")
	s.awaitSuccess(t, map[string]string{next: "user001"})

	// Exactly once, and for good: the simulator ran the running jobs once
	// each (interrupted), the next one, and nothing else; its queue is
	// empty; every job is where it ended, and the counts agree.
	runs := simRuns(t, sims)
	require.Equal(t, []string{"success"}, runs["after"])
	for _, round := range []string{"ui", "api", "instructor"} {
		require.Equal(t, []string{"error"}, runs[round+"/running"], "%s: the running job ran once and was interrupted", round)
		for _, name := range []string{"prefetched", "dispatched", "queued"} {
			require.Empty(t, runs[round+"/"+name], "%s/%s never ran", round, name)
		}
	}
	require.Zero(t, simQueued(t, sims), "nothing left in ComfyUI's queue")
	for _, st := range []stages{ui, api, inst} {
		for _, id := range []string{st.queued, st.dispatched, st.prefetched} {
			r := jobRecord(t, jobs, "user001", id)
			require.Equal(t, wire.StateCancelled, r.State)
			require.LessOrEqual(t, r.Attempt, 1)
		}
		r := jobRecord(t, jobs, "user001", st.running)
		require.Equal(t, wire.StateInterrupted, r.State)
		require.Equal(t, 1, r.Attempt)
	}
	var status struct {
		Finished map[string]int `json:"finished"`
	}
	require.NoError(t, getJSON("http://"+s.brokerAt+"/api/status", "", "", &status))
	require.Equal(t, 9, status.Finished["cancelled"])
	require.Equal(t, 3, status.Finished["interrupted"])
	require.Equal(t, 1, status.Finished["succeeded"])
}
