package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/agent/runtime/simulated"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// recorder remembers every job's state changes and every heartbeat, as
// the broker applies them.
type recorder struct {
	mu      sync.Mutex
	states  map[string][]wire.JobState
	records map[string]wire.JobRecord
	updates map[string]int // changes of each job's record
	hbs     []wire.Heartbeat
	// news is closed, and replaced, at every change.
	news chan struct{}
}

func newRecorder() *recorder {
	return &recorder{
		states: map[string][]wire.JobState{}, records: map[string]wire.JobRecord{}, updates: map[string]int{},
		news: make(chan struct{}),
	}
}

// changed wakes the waits; under r.mu.
func (r *recorder) changed() {
	close(r.news)
	r.news = make(chan struct{})
}

func (r *recorder) JobChanged(_ wire.JobState, rec wire.JobRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.states[rec.ID]; len(l) == 0 || l[len(l)-1] != rec.State {
		r.states[rec.ID] = append(l, rec.State)
	}
	r.records[rec.ID] = rec
	r.updates[rec.ID]++
	r.changed()
}

func (r *recorder) AgentSeen(hb wire.Heartbeat) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hbs = append(r.hbs, hb)
	r.changed()
}

func (r *recorder) AgentLost(string) {}

// finals returns how often each job reached a final state.
func (r *recorder) finals(id string) (n int, last wire.JobRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.finalsLocked(id)
}

func (r *recorder) finalsLocked(id string) (n int, last wire.JobRecord) {
	for _, st := range r.states[id] {
		if st.Final() {
			n++
		}
	}
	return n, r.records[id]
}

// lastHeartbeat returns the latest heartbeat the broker applied; under
// r.mu.
func (r *recorder) lastHeartbeat() (wire.Heartbeat, bool) {
	if len(r.hbs) == 0 {
		return wire.Heartbeat{}, false
	}
	return r.hbs[len(r.hbs)-1], true
}

// waitFor waits until cond (called under r.mu) holds, looking again at
// every change the broker applies; it fails after testutil.WaitTimeout.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(testutil.WaitTimeout())
	defer timer.Stop()
	for {
		r.mu.Lock()
		ok, news := cond(), r.news
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-news:
		case <-timer.C:
			t.Fatalf("waited %s for %s", testutil.WaitTimeout(), what)
		}
	}
}

// await waits until every job is final, and returns their records. It
// fails when none of the jobs' records changed for testutil.WaitTimeout:
// a long job is waited for as long as it makes progress.
func (r *recorder) await(t *testing.T, ids []string) map[string]wire.JobRecord {
	t.Helper()
	timer := time.NewTimer(testutil.WaitTimeout())
	defer timer.Stop()
	progress := -1
	for {
		r.mu.Lock()
		done := map[string]wire.JobRecord{}
		n := 0
		for _, id := range ids {
			if finals, rec := r.finalsLocked(id); finals > 0 {
				done[id] = rec
			}
			n += r.updates[id]
		}
		news := r.news
		r.mu.Unlock()
		if len(done) == len(ids) {
			return done
		}
		if n != progress {
			progress = n
			timer.Reset(testutil.WaitTimeout())
		}
		select {
		case <-news:
		case <-timer.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("jobs not final, no progress for %s: %v", testutil.WaitTimeout(), r.states)
		}
	}
}

type bundle struct {
	broker  *broker.Broker
	agent   *agent.Agent
	runtime *simulated.Runtime
	rec     *recorder
	// signals are the agent's test signals: Attempt, DrainDeadline and
	// Catalog always on, Heartbeat and Fetch when opts asks.
	signals *agent.TestSignals
	nc      *nats.Conn
	js      jetstream.JetStream
	cfg     agent.Config
}

type opts struct {
	gpus       int
	stepDelay  time.Duration
	maxDeliver int
	configure  func(agent.Config) agent.Config
	simConfig  func(int, *comfysim.Config)
	// heartbeats turns the agent's Heartbeat signal on (a test that
	// turns it on reads it: heartbeats keep coming).
	heartbeats bool
	// fetches turns the agent's Fetch signal on (read it: idle slots
	// keep pulling).
	fetches bool
}

// Durations of the simulated ComfyUI and the agent in these tests.
const (
	// fastSteps is a sampler step by default: jobs take milliseconds.
	fastSteps = 2 * time.Millisecond
	// slowSteps is a sampler step of a job that must still run when the
	// test acts on it: 50 steps are about a second.
	slowSteps = 20 * time.Millisecond
	// tick paces the broker's housekeeping, the agent's heartbeats, its
	// scratch measure and its retry delay.
	tick = 100 * time.Millisecond
)

// setup runs a broker with embedded NATS and one agent with simulated
// GPUs.
func setup(t *testing.T, o opts) *bundle {
	t.Helper()
	if o.gpus == 0 {
		o.gpus = 1
	}
	if o.stepDelay == 0 {
		o.stepDelay = fastSteps
	}
	dir := t.TempDir()
	lim := wire.SmallLimits()
	lim.AckWait = 3 * time.Second
	if o.maxDeliver > 0 {
		lim.MaxDeliver = o.maxDeliver
	}
	rec := newRecorder()
	b, err := broker.New(broker.Config{
		DataDir: filepath.Join(dir, "data"), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Limits: lim, TickInterval: tick, Prefetch: o.gpus, Observer: rec, Logger: zerolog.Nop(),
	})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, b.Start(ctx))
	t.Cleanup(func() { _ = b.Stop(context.Background()) })

	rt := &simulated.Runtime{GPUs: o.gpus, Dir: filepath.Join(dir, "sim"), StepDelay: o.stepDelay, Configure: o.simConfig, Logger: zerolog.Nop()}
	cfg := agent.Config{
		ID: "test-agent", NATSURL: b.ClientURL(), Runtime: rt,
		HeartbeatInterval: tick, RetryDelay: tick,
		FetchWait: 2 * time.Second, EventTimeout: 5 * time.Second, DrainTimeout: 5 * time.Second,
		ScratchDir: filepath.Join(dir, "sim"), ScratchInterval: tick,
		Logger: testLogger(t),
	}
	if o.configure != nil {
		cfg = o.configure(cfg)
	}
	a, err := agent.New(cfg)
	require.NoError(t, err)
	sig := agent.SignalsOf(a)
	sig.Attempt.Init()
	sig.DrainDeadline.Init()
	sig.Catalog.Init()
	if o.heartbeats {
		sig.Heartbeat.Init()
	}
	if o.fetches {
		sig.Fetch.Init()
	}
	require.NoError(t, a.Start(ctx))
	t.Cleanup(func() { _ = a.Stop(context.Background()) })

	nc, err := nats.Connect(b.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	bd := &bundle{broker: b, agent: a, runtime: rt, rec: rec, signals: sig, nc: nc, js: js, cfg: cfg}
	// Ready once the broker has the agent's catalog (it answers the
	// report once it stored it) and a heartbeat.
	sig.Catalog.WaitOrTimeout(t)
	rec.waitFor(t, "the broker to see the agent", func() bool { return len(rec.hbs) > 0 })
	return bd
}

// testLogger logs to the test's output when ATELIER_TEST_LOG is set.
func testLogger(t *testing.T) zerolog.Logger {
	if os.Getenv("ATELIER_TEST_LOG") == "" {
		return zerolog.Nop()
	}
	return zerolog.New(zerolog.NewTestWriter(t)).With().Timestamp().Logger()
}

// submit publishes a job as the proxy does and returns its id. steps > 0
// runs the txt2img workflow (model nodes, steps × StepDelay); 0 the
// model-free one.
func (b *bundle) submit(t *testing.T, user string, steps int) string {
	t.Helper()
	id := uuid.NewString()
	var prompt string
	var outputs []string
	if steps > 0 {
		prompt = txt2img(steps)
		outputs = []string{"16"}
	} else {
		prompt = fmt.Sprintf(`{
 "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": %d}},
 "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
 "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0}},
 "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "sim/t"}}
}`, time.Now().UnixNano()%0xffffff)
		outputs = []string{"5"}
	}
	return b.submitPrompt(t, id, user, prompt, outputs)
}

// submitPrompt publishes a job with the given prompt and output nodes.
func (b *bundle) submitPrompt(t *testing.T, id, user, prompt string, outputs []string) string {
	t.Helper()
	return b.submitJob(t, wire.Job{ID: id, User: user, Prompt: json.RawMessage(prompt), OutputsToExecute: outputs})
}

// submitJob publishes a job as the proxy does.
func (b *bundle) submitJob(t *testing.T, job wire.Job) string {
	t.Helper()
	job.Pool = wire.DefaultPool
	job.SubmittedAt = time.Now().UTC()
	data, err := json.Marshal(job)
	require.NoError(t, err)
	_, err = b.js.Publish(context.Background(), wire.SubmitSubject(job.User), data, jetstream.WithMsgID(job.ID))
	require.NoError(t, err)
	return job.ID
}

// requireOnce checks that each job ended exactly once, in want.
func (b *bundle) requireOnce(t *testing.T, recs map[string]wire.JobRecord, want wire.JobState) {
	t.Helper()
	for id, rec := range recs {
		n, _ := b.rec.finals(id)
		require.Equal(t, 1, n, "job %s ended %d times", id, n)
		require.Equal(t, want, rec.State, "job %s: %s (%s)", id, rec.State, rec.Reason)
	}
}

// requireSlotsUp checks that no slot is left dead: every slot's ComfyUI
// answers and its last heartbeat says idle or busy.
func (b *bundle) requireSlotsUp(t *testing.T) {
	t.Helper()
	b.rec.waitFor(t, "every slot idle in the heartbeat", func() bool {
		hb, ok := b.rec.lastHeartbeat()
		if !ok {
			return false
		}
		for _, s := range hb.Slots {
			if s.State != wire.SlotIdle {
				return false
			}
		}
		return true
	})
}

// awaitStep waits for the agent's signal of step for the job (any
// attempt) and returns it.
func (b *bundle) awaitStep(t *testing.T, id string, step agent.AttemptStep) agent.AttemptSignal {
	t.Helper()
	return b.signals.Attempt.WaitFor(t, fmt.Sprintf("job %s %s", id, step), func(s agent.AttemptSignal) bool {
		return s.JobID == id && s.Step == step
	})
}

// control sends a command on ctl.agent.<agent>, as the broker does.
func (b *bundle) control(t *testing.T, req wire.ControlRequest) wire.ControlReply {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := b.nc.Request(wire.ControlSubject(b.cfg.ID), data, testutil.WaitTimeout())
	require.NoError(t, err)
	var reply wire.ControlReply
	require.NoError(t, json.Unmarshal(m.Data, &reply))
	return reply
}

// api calls the broker's API (api.broker.<op>).
func (b *bundle) api(t *testing.T, op string, req any) {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := b.nc.Request(wire.BrokerAPISubject(op), data, testutil.WaitTimeout())
	require.NoError(t, err)
	var reply wire.APIReply
	require.NoError(t, json.Unmarshal(m.Data, &reply))
	require.Empty(t, reply.Error, "%s: %s", op, m.Data)
}

// awaitQuiet waits until nothing is left in flight: the agent holds no
// job and the pool's consumer has no ticket pending or unacknowledged (a
// ticket handed back is redelivered, claimed and skipped first). Checks
// of "exactly once" made after it would see a late duplicate.
func (b *bundle) awaitQuiet(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, func() bool {
		if b.agent.Held() > 0 {
			return false
		}
		c, err := b.js.Consumer(t.Context(), wire.StreamDispatch, wire.DispatchConsumer(wire.DefaultPool))
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && b.agent.Held() == 0
	}, "the system never went quiet")
}
