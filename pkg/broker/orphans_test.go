package broker

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/stretchr/testify/require"
)

// orphanConfig gives up a ticket after its second delivery and takes an
// agent for gone after a second without a heartbeat.
func orphanConfig(c *Config) {
	twoDeliveries(c)
	c.AgentTimeout = time.Second
}

// heartbeats sends agent a1's heartbeat (boot1, one idle slot) every
// 50 ms, listing the jobs *holding points to, until stop is called.
type heartbeats struct {
	mu      sync.Mutex
	holding []string
	stop    func()
}

func (tb *testBundle) heartbeatsOfA1(t *testing.T) *heartbeats {
	t.Helper()
	h := &heartbeats{}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			h.mu.Lock()
			hb := wire.Heartbeat{Agent: "a1", Pool: wire.DefaultPool, Boot: "boot1", At: time.Now(),
				Slots: []wire.SlotStatus{{ID: "gpu0", State: wire.SlotIdle}}, Held: h.holding}
			h.mu.Unlock()
			data, _ := json.Marshal(hb)
			_ = tb.nc.Publish(wire.HeartbeatSubject("a1"), data)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	h.stop = func() { once.Do(func() { close(done); <-finished }) }
	t.Cleanup(h.stop)
	return h
}

// setupOrphan starts a broker with orphanConfig, agent a1's heartbeats
// (holding nothing yet) and one job of user001, dispatched.
func setupOrphan(t *testing.T) (*testBundle, *heartbeats, string) {
	t.Helper()
	tb := setupWith(t, orphanConfig)
	hbs := tb.heartbeatsOfA1(t)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)
	return tb, hbs, id
}

func (h *heartbeats) hold(keys ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holding = keys
}

// A claim answered while the agent had given up waiting (the answer lost
// to a broker restart, say): the broker records the job running on a1,
// a1 never runs it and hands back the ticket's every delivery. While a1
// lists the job as held, its dead ticket waits; once a1's heartbeats no
// longer list it, the job is given back (twice looked at) and released
// again, and runs.
func TestDeadTicketOfAJobItsAgentDoesNotHoldIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb, hbs, id := setupOrphan(t)
	key := wire.HeldKey("user001", id)
	hbs.hold(key)

	tk, first := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	require.NoError(t, first.Nak())
	tb.handBack(t, id) // the ticket is dead
	tb.noTicket(t)

	// Held as far as a1 says: nothing happens over many checks.
	for range 3 {
		tb.noTicket(t)
	}
	r := tb.record(t, "user001", id)
	require.Equal(t, wire.StateRunning, r.State)
	require.Equal(t, "a1", r.Agent)

	// a1 does not hold it (the claim's answer never reached it).
	hbs.hold()
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
	r = tb.record(t, "user001", id)
	require.Equal(t, wire.StateDispatched, r.State)
	require.Empty(t, r.Agent)
	require.Equal(t, "its agent a1 no longer holds it", r.Reason)

	reply := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"})
	require.Equal(t, wire.ClaimGo, reply.Action)
	require.Equal(t, 2, reply.Attempt, "the lost claim counted as an attempt")
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 2})
	tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.NoError(t, msg.DoubleAck(tb.ctx))
}

// An agent killed during its job's last ticket delivery: nothing will
// release the job, and its ticket cannot come back. Once the agent is
// gone (no heartbeat for AgentTimeout), the job is given back and
// released again, and another agent runs it.
func TestDeadTicketOfAJobWhoseAgentIsGoneIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb, hbs, id := setupOrphan(t)

	tk, first := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	hbs.hold(wire.HeldKey("user001", id))
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	require.NoError(t, first.Nak()) // its lease lapsed: the ticket comes again
	tb.handBack(t, id)              // and a1 defers it (it holds the job): dead
	hbs.stop()                      // a1 is killed

	tb.heartbeat(t, "a2", "boot2", 1)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
	require.Equal(t, "its agent a1 is gone", tb.record(t, "user001", id).Reason)
	reply := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a2", Slot: "gpu0", Boot: "boot2"})
	require.Equal(t, wire.ClaimGo, reply.Action)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a2", Attempt: 2})
	tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.NoError(t, msg.DoubleAck(tb.ctx))
}
