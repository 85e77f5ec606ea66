package agent_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/comfyclient"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// The broker records a claimed job running as it answers the claim, while
// the slot still stages it (here: ComfyUI takes a minute to register the
// job's WebSocket). A cancel in that window reaches the agent, which drops the
// job: it ends interrupted, once, and never executes in ComfyUI.
func TestInterruptWhileStaging(t *testing.T) {
	t.Parallel()
	b, id, executed := claimedWhileStaging(t)

	reply := b.control(t, wire.ControlRequest{Op: wire.CtlInterrupt, JobID: id, User: "user001"})
	require.True(t, reply.Done, "the agent holds the claimed job while it stages it")
	// Well before the minute is up: the interrupt cut the staging short.
	recs := b.rec.await(t, []string{id})
	b.requireOnce(t, recs, wire.StateInterrupted)

	// Still once, and never run, when everything has settled (the ticket
	// came back and was skipped).
	b.awaitQuiet(t)
	b.requireOnce(t, recs, wire.StateInterrupted)
	require.Zero(t, executed.Load(), "the interrupted job never reached the GPU")
}

// claimedWhileStaging submits a job to an agent whose ComfyUI takes a
// minute to register the job's WebSocket, and returns once the broker
// records the job running: the slot is still staging it. executed counts
// the prompts ComfyUI started.
func claimedWhileStaging(t *testing.T) (b *bundle, id string, executed *atomic.Int32) {
	t.Helper()
	executed = new(atomic.Int32)
	b = setup(t, opts{gpus: 1, simConfig: func(_ int, c *comfysim.Config) {
		c.WSRegisterDelay = time.Minute
		c.OnExecute = func(string) { executed.Add(1) }
	}})
	id = b.submit(t, "user001", 0)
	// The broker answers the claim once it recorded the job running.
	b.awaitStep(t, id, agent.StepClaimed)
	return b, id, executed
}

// A cancel through the broker's API in the same window: the job ends
// cancelled or interrupted (the broker's word), once, and never runs.
func TestCancelWhileStaging(t *testing.T) {
	t.Parallel()
	b, id, executed := claimedWhileStaging(t)
	admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
	b.api(t, wire.OpCancel, wire.CancelRequest{Caller: admin, User: "user001", JobIDs: []string{id}})
	b.rec.await(t, []string{id})
	b.awaitQuiet(t)
	n, rec := b.rec.finals(id)
	require.Equal(t, 1, n, "ended once")
	require.Contains(t, []wire.JobState{wire.StateInterrupted, wire.StateCancelled}, rec.State, "%s (%s)", rec.State, rec.Reason)
	require.Zero(t, executed.Load(), "the cancelled job never reached the GPU")
}

// interruptHook stops a job from inside a simulator hook (the
// simulator's goroutine: no require there) and keeps the answer for the
// test: the broker's interrupt sent straight to the agent, or (cancel) a
// cancel through the broker's API, which is how a job the broker does not
// yet record running (prefetched) is stopped.
type interruptHook struct {
	b       *bundle
	cancel  bool
	job     atomic.Pointer[string]
	replies chan error
}

func newInterruptHook() *interruptHook {
	return &interruptHook{replies: make(chan error, 1)}
}

// fire interrupts the armed job once, synchronously: the simulator waits
// in the hook, so the interrupt lands in exactly that moment.
func (h *interruptHook) fire() {
	id := h.job.Swap(nil)
	if id == nil {
		return
	}
	if h.cancel {
		admin := wire.Caller{User: "admin", Role: wire.RoleAdmin}
		data, _ := json.Marshal(wire.CancelRequest{Caller: admin, User: "user001", JobIDs: []string{*id}})
		m, err := h.b.nc.Request(wire.BrokerAPISubject(wire.OpCancel), data, testutil.WaitTimeout())
		if err == nil {
			var reply wire.CancelReply
			if err = json.Unmarshal(m.Data, &reply); err == nil && (reply.Error != "" || len(reply.Affected) != 1) {
				err = fmt.Errorf("the broker did not cancel the job: %s", m.Data)
			}
		}
		h.replies <- err
		return
	}
	data, _ := json.Marshal(wire.ControlRequest{Op: wire.CtlInterrupt, JobID: *id, User: "user001"})
	m, err := h.b.nc.Request(wire.ControlSubject(h.b.cfg.ID), data, testutil.WaitTimeout())
	if err == nil {
		var reply wire.ControlReply
		if err = json.Unmarshal(m.Data, &reply); err == nil && !reply.Done {
			err = fmt.Errorf("the agent did not take the interrupt: %s", m.Data)
		}
	}
	h.replies <- err
}

// An interrupt sent the moment a job's prompt is queued in ComfyUI ends
// the job interrupted, exactly once and without outputs, whether ComfyUI
// holds the prompt pending behind another (POST /interrupt by id ignores
// a pending prompt: the agent must take it out of ComfyUI's queue and end
// the run itself, no event will come) or is about to execute it (ComfyUI
// clears its interrupt flag when an execution begins: the agent must
// interrupt again once it started).
func TestInterruptRightAfterQueueing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// behind: the prompt waits in ComfyUI's queue behind a prompt
		// the agent knows nothing of (stuck in ComfyUI); else the
		// interrupt comes while ComfyUI's worker is about to run it.
		behind bool
		// prefetched: the job is the slot's next one, queued ahead in
		// ComfyUI while another job runs; it is cancelled through the
		// broker (which may not record it running yet), and ends
		// cancelled or interrupted, the broker's word.
		prefetched bool
	}{
		{name: "pending behind another", behind: true},
		{name: "about to be dequeued"},
		{name: "about to be dequeued, queued ahead", prefetched: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hook := newInterruptHook()
			hook.cancel = tc.prefetched
			var executed sync.Map // prompt id → true
			b := setup(t, opts{gpus: 1, stepDelay: slowSteps, simConfig: func(_ int, c *comfysim.Config) {
				c.OnExecute = func(id string) { executed.Store(id, true) }
				if tc.behind {
					c.OnPrompt = func(string) { hook.fire() }
				} else {
					c.OnDequeue = func(string) { hook.fire() }
				}
			}})
			hook.b = b
			sim := b.runtime.Simulators()[0]
			comfy := comfyclient.New(sim.URL(), nil)

			// first: the prompt in ComfyUI before the job's; before: its
			// job, when it is one.
			var first, before string
			if tc.behind {
				// Something ComfyUI runs and the agent does not know
				// of, stuck in ComfyUI until interrupted.
				sim.SetFault(comfysim.Fault{Kind: comfysim.FaultHang, Node: "ImageBlur", Count: 1})
				resp, err := comfy.QueuePrompt(t.Context(), comfyclient.PromptRequest{Prompt: json.RawMessage(`{
 "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
 "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
 "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "other"}}}`)})
				require.NoError(t, err)
				first = resp.PromptID
				testutil.Eventually(t, func() bool {
					running, _, err := comfy.Queue(t.Context())
					return err == nil && len(running) == 1 && running[0].PromptID == first
				}, "ComfyUI to run the other prompt")
			} else if tc.prefetched {
				// Dequeued without an interrupt (the hook is not armed).
				before = b.submit(t, "user002", 25) // ~0.5 s
				b.awaitStep(t, before, agent.StepExecuting)
				executed.Range(func(k, _ any) bool { first = k.(string); return false })
				require.NotEmpty(t, first)
			}

			id := uuid.NewString()
			hook.job.Store(&id)
			b.submitPrompt(t, id, "user001", txt2img(50), []string{"16"}) // ~1 s if it ran
			require.NoError(t, testutil.WaitOrTimeout(t, hook.replies), "the job's prompt reached ComfyUI")
			recs := b.rec.await(t, []string{id})
			b.awaitQuiet(t)
			if tc.prefetched {
				n, rec := b.rec.finals(id)
				require.Equal(t, 1, n, "ended once")
				require.Contains(t, []wire.JobState{wire.StateInterrupted, wire.StateCancelled}, rec.State, "%s (%s)", rec.State, rec.Reason)
			} else {
				b.requireOnce(t, recs, wire.StateInterrupted)
			}
			require.Empty(t, recs[id].Outputs, "an interrupted job has no outputs")

			// What ComfyUI itself did with the prompt: never ran it
			// (behind), or began it and was interrupted before any
			// output.
			n := 0
			executed.Range(func(k, _ any) bool {
				if k != first {
					n++
					entry, found, err := comfy.History(t.Context(), k.(string))
					require.NoError(t, err)
					require.True(t, found)
					var h struct {
						Outputs map[string]any `json:"outputs"`
						Status  struct {
							StatusStr string `json:"status_str"`
						} `json:"status"`
					}
					require.NoError(t, json.Unmarshal(entry, &h))
					require.Equal(t, "error", h.Status.StatusStr, "interrupted in ComfyUI")
					require.Empty(t, h.Outputs)
				}
				return true
			})
			if tc.behind {
				require.Zero(t, n, "the prompt never ran in ComfyUI")
				require.NoError(t, comfy.Interrupt(t.Context(), first))
			} else {
				require.Equal(t, 1, n, "the prompt began in ComfyUI")
			}
			if tc.prefetched {
				n, rec := b.rec.finals(before)
				require.Equal(t, 1, n)
				require.Equal(t, wire.StateSucceeded, rec.State, "the job that ran before is untouched")
			}
			b.requireSlotsUp(t)
		})
	}
}

// txt2img is the sampler workflow with its SaveImage as node 16.
func txt2img(steps int) string {
	return fmt.Sprintf(`{
 "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": %q}},
 "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "a lighthouse"}},
 "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "blurry"}},
 "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
 "14": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "latent_image": ["13", 0],
        "seed": %d, "steps": %d, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
 "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
 "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "t2i"}}
}`, comfysim.DefaultCheckpoint, time.Now().UnixNano()%1_000_000, steps)
}
