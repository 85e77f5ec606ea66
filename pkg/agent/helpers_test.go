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

// recorder remembers every job's state changes, as the broker applies
// them.
type recorder struct {
	mu      sync.Mutex
	states  map[string][]wire.JobState
	records map[string]wire.JobRecord
	hbs     []wire.Heartbeat
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{states: map[string][]wire.JobState{}, records: map[string]wire.JobRecord{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) JobChanged(_ wire.JobState, rec wire.JobRecord) {
	r.mu.Lock()
	if l := r.states[rec.ID]; len(l) == 0 || l[len(l)-1] != rec.State {
		r.states[rec.ID] = append(l, rec.State)
	}
	r.records[rec.ID] = rec
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}
func (r *recorder) AgentSeen(hb wire.Heartbeat) {
	r.mu.Lock()
	r.hbs = append(r.hbs, hb)
	r.mu.Unlock()
}
func (r *recorder) AgentLost(string) {}

// finals returns how often each job reached a final state.
func (r *recorder) finals(id string) (n int, last wire.JobRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, st := range r.states[id] {
		if st.Final() {
			n++
		}
	}
	return n, r.records[id]
}

// await waits until every job is final, and returns their records.
func (r *recorder) await(t *testing.T, ids []string, within time.Duration) map[string]wire.JobRecord {
	t.Helper()
	deadline := time.After(within)
	for {
		done := map[string]wire.JobRecord{}
		for _, id := range ids {
			if n, rec := r.finals(id); n > 0 {
				done[id] = rec
			}
		}
		if len(done) == len(ids) {
			return done
		}
		select {
		case <-r.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("jobs not final within %s: %v", within, r.states)
		}
	}
}

type bundle struct {
	broker  *broker.Broker
	agent   *agent.Agent
	runtime *simulated.Runtime
	rec     *recorder
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
}

// setup runs a broker with embedded NATS and one agent with simulated
// GPUs.
func setup(t *testing.T, o opts) *bundle {
	t.Helper()
	if o.gpus == 0 {
		o.gpus = 1
	}
	if o.stepDelay == 0 {
		o.stepDelay = 2 * time.Millisecond
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
		Limits: lim, TickInterval: 100 * time.Millisecond, Prefetch: o.gpus, Observer: rec, Logger: zerolog.Nop(),
	})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, b.Start(ctx))
	t.Cleanup(func() { _ = b.Stop(context.Background()) })

	rt := &simulated.Runtime{GPUs: o.gpus, Dir: filepath.Join(dir, "sim"), StepDelay: o.stepDelay, Configure: o.simConfig, Logger: zerolog.Nop()}
	cfg := agent.Config{
		ID: "test-agent", NATSURL: b.ClientURL(), Runtime: rt,
		HeartbeatInterval: 100 * time.Millisecond, RetryDelay: 100 * time.Millisecond,
		FetchWait: 2 * time.Second, EventTimeout: 5 * time.Second, DrainTimeout: 5 * time.Second,
		ScratchDir: filepath.Join(dir, "sim"), ScratchInterval: 100 * time.Millisecond,
		Logger: testLogger(t),
	}
	if o.configure != nil {
		cfg = o.configure(cfg)
	}
	a, err := agent.New(cfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	t.Cleanup(func() { _ = a.Stop(context.Background()) })

	nc, err := nats.Connect(b.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	bd := &bundle{broker: b, agent: a, runtime: rt, rec: rec, nc: nc, js: js, cfg: cfg}
	// Ready once the agent's catalog reached the broker.
	require.Eventually(t, func() bool {
		st, err := b.Status(ctx)
		return err == nil && len(st.Agents) > 0 && st.Catalogs > 0
	}, 20*time.Second, 20*time.Millisecond)
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
	var last wire.Heartbeat
	require.Eventually(t, func() bool {
		b.rec.mu.Lock()
		defer b.rec.mu.Unlock()
		if len(b.rec.hbs) == 0 {
			return false
		}
		hb := b.rec.hbs[len(b.rec.hbs)-1]
		last = hb
		for _, s := range hb.Slots {
			if s.State != wire.SlotIdle {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "a slot did not come back idle: %+v", &last)
}

// control sends a command on ctl.agent.<agent>, as the broker does.
func (b *bundle) control(t *testing.T, req wire.ControlRequest) wire.ControlReply {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := b.nc.Request(wire.ControlSubject(b.cfg.ID), data, 5*time.Second)
	require.NoError(t, err)
	var reply wire.ControlReply
	require.NoError(t, json.Unmarshal(m.Data, &reply))
	return reply
}

// api calls the broker's API (api.broker.<op>).
func (b *bundle) api(t *testing.T, op string, req any) {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := b.nc.Request(wire.BrokerAPISubject(op), data, 10*time.Second)
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
	require.Eventually(t, func() bool {
		if b.agent.Held() > 0 {
			return false
		}
		c, err := b.js.Consumer(t.Context(), wire.StreamDispatch, wire.DispatchConsumer(wire.DefaultPool))
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && b.agent.Held() == 0
	}, 30*time.Second, 20*time.Millisecond, "the system never went quiet")
}
