package broker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// testBundle is a running broker and a client playing proxy and agent.
type testBundle struct {
	broker *Broker
	dir    string
	nc     *nats.Conn
	js     jetstream.JetStream
	jobs   jetstream.KeyValue
	ctx    context.Context
	// configure, when set, adjusts the broker's configuration.
	configure func(*Config)
	// signals, when set, turns on test signals beyond the ones every
	// bundle's broker has (testSignals.Init), such as the periodic ones.
	signals func(*testSignals)
	// poolReady says the default pool's consumer serves pulls: the broker
	// signalled that it created it, on this NATS server.
	poolReady bool
}

func setup(t *testing.T) *testBundle { return setupWith(t, nil) }

// setupWith starts a broker whose configuration configure adjusts.
func setupWith(t *testing.T, configure func(*Config)) *testBundle {
	t.Helper()
	return setupWithSignals(t, configure, nil)
}

// setupWithSignals starts a broker whose configuration configure adjusts
// and that has the test signals signals turns on.
func setupWithSignals(t *testing.T, configure func(*Config), signals func(*testSignals)) *testBundle {
	t.Helper()
	tb := &testBundle{dir: t.TempDir(), ctx: context.Background(), configure: configure, signals: signals}
	tb.start(t)
	return tb
}

func (tb *testBundle) start(t *testing.T) {
	t.Helper()
	cfg := Config{
		DataDir: tb.dir, NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		TickInterval: 50 * time.Millisecond, Prefetch: 0, Logger: zerolog.Nop(),
	}
	if tb.configure != nil {
		tb.configure(&cfg)
	}
	b, err := New(cfg)
	require.NoError(t, err)
	b.testSignals.Init()
	if tb.signals != nil {
		tb.signals(&b.testSignals)
	}
	if cfg.NATSURL == "" {
		tb.poolReady = false // a new embedded server: memory streams start empty
	}
	require.NoError(t, b.Start(tb.ctx))
	tb.broker = b
	url := b.ClientURL()
	if old := tb.nc; old != nil {
		// A restart after stopBroker: messages fetched on the old
		// connection are still acknowledged on it; it closes at the end.
		t.Cleanup(old.Close)
	}
	if cfg.NATSUser != "" {
		url = strings.Replace(url, "nats://", "nats://"+cfg.NATSUser+":"+cfg.NATSPassword+"@", 1)
	}
	tb.nc, err = nats.Connect(url)
	require.NoError(t, err)
	tb.js, err = jetstream.New(tb.nc)
	require.NoError(t, err)
	tb.jobs, err = tb.js.KeyValue(tb.ctx, wire.BucketJobs)
	require.NoError(t, err)
	t.Cleanup(tb.stop)
}

func (tb *testBundle) stop() {
	if tb.nc != nil {
		tb.nc.Close()
		tb.nc = nil
	}
	if tb.broker != nil {
		_ = tb.broker.Stop(context.Background())
		tb.broker = nil
	}
}

// submit publishes a job the way the proxy does.
func (tb *testBundle) submit(t *testing.T, user string) string {
	t.Helper()
	return tb.submitTo(t, user, wire.DefaultPool)
}

// submitTo publishes a job for a pool.
func (tb *testBundle) submitTo(t *testing.T, user, pool string) string {
	t.Helper()
	id := uuid.NewString()
	data, _ := json.Marshal(wire.Job{
		ID: id, User: user, Pool: pool,
		Prompt: json.RawMessage(`{"1":{"class_type":"EmptyImage","inputs":{}}}`), OutputsToExecute: []string{"1"},
		SubmittedAt: time.Now(),
	})
	_, err := tb.js.Publish(tb.ctx, wire.SubmitSubject(user), data, jetstream.WithMsgID(id))
	require.NoError(t, err)
	return id
}

func (tb *testBundle) record(t *testing.T, user, id string) wire.JobRecord {
	t.Helper()
	e, err := tb.jobs.Get(tb.ctx, wire.JobKey(user, id))
	require.NoError(t, err)
	var r wire.JobRecord
	require.NoError(t, json.Unmarshal(e.Value(), &r))
	return r
}

func (tb *testBundle) awaitState(t *testing.T, user, id string, want wire.JobState) wire.JobRecord {
	t.Helper()
	return tb.awaitJob(t, user, id, "state "+string(want), func(r wire.JobRecord) bool { return r.State == want })
}

// awaitJob waits until the job's record in JOBS satisfies cond (what says
// how, for the failure). It reads the record again each time the broker
// signals that it wrote one (testSignals.jobChanged), of any job: a signal
// read earlier, or one of another job, costs a read, never a missed
// change.
func (tb *testBundle) awaitJob(t *testing.T, user, id, what string, cond func(wire.JobRecord) bool) wire.JobRecord {
	t.Helper()
	changed := tb.broker.testSignals.jobChanged.C()
	require.NotNil(t, changed, "the broker's test signals are off (testSignals.Init)")
	timeout := time.NewTimer(testutil.WaitTimeout())
	defer timeout.Stop()
	var r wire.JobRecord
	for {
		if e, err := tb.jobs.Get(tb.ctx, wire.JobKey(user, id)); err == nil {
			r = wire.JobRecord{}
			require.NoError(t, json.Unmarshal(e.Value(), &r))
			if cond(r) {
				return r
			}
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("after %s, job %s is not at %s (last state: %s)", testutil.WaitTimeout(), id, what, r.State)
		}
	}
}

// awaitHousekeeping waits for two housekeeping rounds that began after the
// call: every dispatch retry they make has then been made. The bundle's
// broker needs its housekept signal on (withHousekeeping).
func (tb *testBundle) awaitHousekeeping(t *testing.T) {
	t.Helper()
	s := &tb.broker.testSignals.housekept
	for len(s.C()) > 0 {
		<-s.C()
	}
	// The first may have begun before the call; the second began after
	// the first ended.
	s.WaitOrTimeout(t)
	s.WaitOrTimeout(t)
}

// withHousekeeping turns the housekept signal on.
func withHousekeeping(ts *testSignals) { ts.housekept.Init() }

func (tb *testBundle) heartbeat(t *testing.T, agent, boot string, slots int) {
	t.Helper()
	tb.heartbeatIn(t, agent, boot, wire.DefaultPool, slots)
}

// heartbeatIn sends a heartbeat of an agent of a pool with idle slots.
func (tb *testBundle) heartbeatIn(t *testing.T, agent, boot, pool string, slots int) {
	t.Helper()
	hb := wire.Heartbeat{Agent: agent, Pool: pool, Boot: boot, At: time.Now()}
	for range slots {
		hb.Slots = append(hb.Slots, wire.SlotStatus{ID: "gpu", State: wire.SlotIdle})
	}
	data, _ := json.Marshal(hb)
	require.NoError(t, tb.nc.Publish(wire.HeartbeatSubject(agent), data))
	require.NoError(t, tb.nc.Flush())
}

func (tb *testBundle) claim(t *testing.T, req wire.ClaimRequest) wire.ClaimReply {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := tb.nc.Request(wire.ClaimSubject(req.Agent), data, 5*time.Second)
	require.NoError(t, err)
	var reply wire.ClaimReply
	require.NoError(t, json.Unmarshal(m.Data, &reply))
	return reply
}

func (tb *testBundle) report(t *testing.T, r wire.Report) {
	t.Helper()
	r.At = time.Now()
	data, _ := json.Marshal(r)
	_, err := tb.js.Publish(tb.ctx, wire.ReportSubject(r.Agent, r.JobID), data)
	require.NoError(t, err)
}

// readyPoolConsumer returns the default pool's DISPATCH consumer once it serves
// pulls. The broker creates it on the first heartbeat; CONSUMER.INFO shows
// it a moment before the server subscribes its pull handler, and a fetch in
// that moment ends at once with "no responders". The broker's create call
// returns only after that subscription, so its signal is what to wait for.
func (tb *testBundle) readyPoolConsumer(t *testing.T) jetstream.Consumer {
	t.Helper()
	if !tb.poolReady {
		tb.broker.testSignals.poolConsumerReady.WaitFor(t, "the broker to create the default pool's consumer",
			func(pool string) bool { return pool == wire.DefaultPool })
		tb.poolReady = true
	}
	cons, err := tb.js.Consumer(tb.ctx, wire.StreamDispatch, wire.DispatchConsumer(wire.DefaultPool))
	require.NoError(t, err)
	return cons
}

// fetchTicket pulls one ticket of the default pool, waiting as long as any
// test wait: a ticket the broker releases again comes after an agent
// timeout or a periodic check.
func (tb *testBundle) fetchTicket(t *testing.T) (wire.Ticket, jetstream.Msg) {
	t.Helper()
	batch, err := tb.readyPoolConsumer(t).Fetch(1, jetstream.FetchMaxWait(testutil.WaitTimeout()))
	require.NoError(t, err)
	for m := range batch.Messages() {
		var tk wire.Ticket
		require.NoError(t, json.Unmarshal(m.Data(), &tk))
		return tk, m
	}
	require.NoError(t, batch.Error(), "fetch a ticket")
	t.Fatalf("no ticket after %s", testutil.WaitTimeout())
	return wire.Ticket{}, nil
}

func TestJobLifecycle(t *testing.T) {
	t.Parallel()
	tb := setupWithSignals(t, nil, withHousekeeping)
	id := tb.submit(t, "user001")
	r := tb.awaitState(t, "user001", id, wire.StateQueued)
	require.NotZero(t, r.Number)
	require.Equal(t, r.Number, r.SubmitSeq)

	// No agent, no ticket: the job waits queued through housekeeping's
	// dispatch retries.
	tb.awaitHousekeeping(t)
	require.Equal(t, wire.StateQueued, tb.record(t, "user001", id).State)

	tb.heartbeat(t, "a1", "boot1", 1)
	tb.awaitState(t, "user001", id, wire.StateDispatched)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)

	reply := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"})
	require.Equal(t, wire.ClaimGo, reply.Action)
	require.Equal(t, 1, reply.Attempt)
	require.Equal(t, id, reply.Job.ID)
	require.JSONEq(t, `{"1":{"class_type":"EmptyImage","inputs":{}}}`, string(reply.Job.Prompt))
	r = tb.awaitState(t, "user001", id, wire.StateRunning)
	require.Equal(t, "a1", r.Agent)

	// A second agent's claim of the same job is deferred while a1 lives.
	tb.heartbeat(t, "a2", "boot2", 1)
	later := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a2", Slot: "gpu0", Boot: "boot2"})
	require.Equal(t, wire.ClaimLater, later.Action)

	// A stale attempt's report is ignored.
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 7})
	tb.report(t, wire.Report{Kind: wire.ReportOutput, JobID: id, User: "user001", Agent: "a1", Attempt: 1,
		Node: "9", Output: json.RawMessage(`{"images":[{"filename":"a.png","subfolder":"","type":"output"}]}`)})
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 1,
		Messages: []json.RawMessage{json.RawMessage(`["execution_start",{"prompt_id":"x","timestamp":1}]`)}})
	r = tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.Contains(t, r.Outputs, "9")
	require.Len(t, r.Messages, 1)
	require.NoError(t, msg.DoubleAck(tb.ctx))

	// The finished job left SUBMIT, and its tickets are skipped.
	tb.requireSubmitGone(t, r)
	skip := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a2", Slot: "gpu0", Boot: "boot2"})
	require.Equal(t, wire.ClaimSkip, skip.Action)

	st, err := tb.broker.Status(tb.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Finished[wire.StateSucceeded])
}

func TestRoundRobinAcrossUsersAtSlotTime(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	var a []string
	for range 3 {
		a = append(a, tb.submit(t, "alice"))
	}
	b := tb.submit(t, "bob")
	tb.awaitState(t, "bob", b, wire.StateQueued)
	for _, id := range a {
		tb.awaitState(t, "alice", id, wire.StateQueued)
	}
	tb.heartbeat(t, "a1", "boot", 1) // one slot, no prefetch: one ticket at a time

	var order []string
	for range 4 {
		tk, msg := tb.fetchTicket(t)
		order = append(order, tk.User)
		reply := tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: tk.User, Agent: "a1", Slot: "gpu0", Boot: "boot"})
		require.Equal(t, wire.ClaimGo, reply.Action)
		tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: tk.JobID, User: tk.User, Agent: "a1", Attempt: 1})
		tb.awaitState(t, tk.User, tk.JobID, wire.StateSucceeded)
		require.NoError(t, msg.DoubleAck(tb.ctx))
	}
	require.Equal(t, []string{"alice", "bob", "alice", "alice"}, order)
}

func TestRestartKeepsQueuedAndRunningJobs(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	queued := tb.submit(t, "user001")
	running := tb.submit(t, "user002")
	tb.awaitState(t, "user001", queued, wire.StateQueued)
	tb.awaitState(t, "user002", running, wire.StateQueued)
	tb.heartbeat(t, "a1", "boot1", 1)
	// One slot: the first released ticket runs, the other job stays queued.
	tk, _ := tb.fetchTicket(t)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: tk.User, Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	other, otherUser := queued, "user001"
	if tk.JobID == queued {
		other, otherUser = running, "user002"
	}

	tb.stop()
	tb.start(t) // same data directory: file storage survives

	// The running job can still report; the queued one is dispatched once
	// an agent heartbeats again.
	tb.heartbeat(t, "a1", "boot1", 1)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: tk.JobID, User: tk.User, Agent: "a1", Attempt: 1})
	tb.awaitState(t, tk.User, tk.JobID, wire.StateSucceeded)
	tb.awaitState(t, otherUser, other, wire.StateDispatched)
}
