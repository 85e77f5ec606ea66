package broker

import (
	"context"
	"fmt"
	"github.com/atelier-run/atelier/internal/testutil"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// twoDeliveries keeps the tests short: a ticket is given up after its
// second delivery.
func twoDeliveries(c *Config) {
	c.Limits = wire.SmallLimits()
	c.Limits.MaxDeliver = 2
	c.TicketCheckInterval = 200 * time.Millisecond
}

// handBack fetches the pool's next ticket and hands it back without
// running it, the way an agent does for a prefetch dropped on drain, a
// ticket it already holds, a claim answered "later" or a fetch during a
// drain: each one uses up a delivery.
func (tb *testBundle) handBack(t *testing.T, job string) wire.Ticket {
	t.Helper()
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, job, tk.JobID)
	require.NoError(t, msg.Nak())
	return tk
}

// noTicket waits briefly for a ticket that must not come. A pending
// fetch is also what makes the server notice that a ticket is dead (it
// decides when it would deliver it again).
func (tb *testBundle) noTicket(t *testing.T) {
	t.Helper()
	batch, err := tb.readyPoolConsumer(t).Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond))
	require.NoError(t, err)
	for m := range batch.Messages() {
		t.Fatalf("a ticket was delivered: %s", m.Data())
	}
	require.NoError(t, batch.Error(), "fetch a ticket")
}

// A ticket whose every delivery was handed back without a run is released
// again (the server's max-deliveries advisory, captured in DEADTICKETS),
// and the job then runs; the dead ticket leaves DISPATCH.
func TestDeadTicketIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb := setupWith(t, twoDeliveries)
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)

	require.Equal(t, 1, tb.handBack(t, id).Release)
	require.Equal(t, 1, tb.handBack(t, id).Release)
	// The server gives the ticket up when it would deliver it a third
	// time; the broker releases a new one, which this fetch receives.
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 1})
	r := tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.Equal(t, 2, r.Releases)
	require.Equal(t, 1, r.Attempt)
	require.NoError(t, msg.DoubleAck(tb.ctx))

	dispatch, err := tb.js.Stream(tb.ctx, wire.StreamDispatch)
	require.NoError(t, err)
	testutil.Eventually(t, func() bool {
		info, err := dispatch.Info(tb.ctx)
		return err == nil && info.State.Msgs == 0
	}, "the dead ticket stays in DISPATCH")
}

// Real attempts count across tickets: a job released again keeps its
// attempts, and once they reach MaxDeliver its dead ticket fails it with
// the reason, rather than releasing it for ever.
func TestDeadTicketFailsAJobOutOfAttempts(t *testing.T) {
	t.Parallel()
	tb := setupWith(t, twoDeliveries)
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)

	runAndRelease := func(attempt int) {
		t.Helper()
		tk, msg := tb.fetchTicket(t)
		require.Equal(t, id, tk.JobID)
		reply := tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"})
		require.Equal(t, wire.ClaimGo, reply.Action)
		require.Equal(t, attempt, reply.Attempt)
		tb.report(t, wire.Report{Kind: wire.ReportReleased, JobID: id, User: "user001", Agent: "a1", Attempt: attempt, Reason: "ComfyUI restarted"})
		tb.awaitJob(t, "user001", id, "no agent", func(r wire.JobRecord) bool { return r.Agent == "" })
		require.NoError(t, msg.Nak())
	}
	runAndRelease(1)
	tb.handBack(t, id) // the first ticket is dead
	runAndRelease(2)   // the second ticket's first delivery: attempt 2
	tb.handBack(t, id) // and it dies too: attempts are used up
	tb.noTicket(t)

	r := tb.awaitState(t, "user001", id, wire.StateFailed)
	require.Equal(t, "gave up after 2 attempts: ComfyUI restarted", r.Reason)
	require.Equal(t, 2, r.Releases)
	tb.requireSubmitGone(t, r)
}

// A dead ticket of a job a slot still holds waits: when the slot gives the
// job back, the job gets a new ticket then.
func TestDeadTicketOfAHeldJobWaitsForItsRelease(t *testing.T) {
	t.Parallel()
	tb := setupWith(t, twoDeliveries)
	tb.heartbeat(t, "a1", "boot1", 2)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)

	// The first delivery is claimed and runs; the ticket comes again
	// (the agent's lease lapsed, say) and is deferred twice.
	tk, first := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	require.NoError(t, first.Nak())
	tb.handBack(t, id)
	st, err := tb.js.Stream(tb.ctx, StreamDeadTickets)
	require.NoError(t, err)
	tb.noTicket(t)
	testutil.Eventually(t, func() bool {
		info, err := st.Info(tb.ctx)
		return err == nil && info.State.Msgs == 1 // kept, not acknowledged
	}, "the dead ticket was not kept in DEADTICKETS")
	require.Equal(t, wire.StateRunning, tb.record(t, "user001", id).State)

	// The slot gives it back: the next look at the dead ticket releases
	// a new one.
	tb.report(t, wire.Report{Kind: wire.ReportReleased, JobID: id, User: "user001", Agent: "a1", Attempt: 1, Reason: "drained"})
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, 2, tk.Release)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: id, User: "user001", Agent: "a1", Slot: "gpu1", Boot: "boot1"}).Action)
	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: id, User: "user001", Agent: "a1", Attempt: 2})
	tb.awaitState(t, "user001", id, wire.StateSucceeded)
	require.NoError(t, msg.DoubleAck(tb.ctx))
}

// A ticket that dies while the broker is down (here against an external
// NATS that keeps running) is released again after the restart: the
// advisory waited in DEADTICKETS.
func TestDeadTicketWhileTheBrokerIsDown(t *testing.T) {
	t.Parallel()
	tb := setupOnExternalNATS(t)
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)

	tb.stopBroker(t)
	tb.handBack(t, id)
	tb.handBack(t, id)
	tb.noTicket(t)

	tb.stop()
	tb.start(t)
	tb.heartbeat(t, "a1", "boot1", 1)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
	require.NoError(t, msg.Ack())
}

// A waiting job whose ticket vanished from DISPATCH (acknowledged without
// a run, or removed) gets a new one from the periodic check.
func TestVanishedTicketIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb := setupWith(t, twoDeliveries)
	tb.heartbeat(t, "a1", "boot1", 1)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateDispatched)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, 1, tk.Release)
	require.NoError(t, msg.Ack()) // a bug somewhere: acknowledged, not run

	tk, msg = tb.fetchTicket(t)
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
	require.NoError(t, msg.Ack())
	r := tb.record(t, "user001", id)
	require.Equal(t, wire.StateDispatched, r.State)
	require.Equal(t, 2, r.Releases)
}

// A ticket lost while the broker was down (an embedded server killed before
// it synced can lose one it acknowledged) is found missing after the
// restart: the job, dispatched in JOBS, gets a new ticket; a job whose
// ticket is still there keeps it.
func TestLostTicketAfterARestartIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb := setupOnExternalNATS(t)
	tb.heartbeat(t, "a1", "boot1", 2)
	lost := tb.submit(t, "user001")
	tb.awaitState(t, "user001", lost, wire.StateDispatched)
	kept := tb.submit(t, "user002")
	tb.awaitState(t, "user002", kept, wire.StateDispatched)

	tb.stopBroker(t)
	dispatch, err := tb.js.Stream(tb.ctx, wire.StreamDispatch)
	require.NoError(t, err)
	info, err := dispatch.Info(tb.ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, info.State.Msgs)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := dispatch.GetMsg(tb.ctx, seq)
		require.NoError(t, err)
		if strings.Contains(string(m.Data), lost) {
			require.NoError(t, dispatch.DeleteMsg(tb.ctx, seq))
		}
	}

	tb.stop()
	tb.start(t)
	tb.heartbeat(t, "a1", "boot1", 2)
	got := map[string]int{}
	for i := range 2 {
		tk, _ := tb.fetchTicket(t)
		got[tk.JobID] = tk.Release
		require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: tk.JobID, User: tk.User, Agent: "a1", Slot: fmt.Sprintf("gpu%d", i), Boot: "boot1"}).Action)
	}
	require.Equal(t, map[string]int{lost: 2, kept: 1}, got)
	tb.noTicket(t)
}

// setupOnExternalNATS returns a test bundle whose broker runs against an
// external embedded server, so the broker can be stopped while the
// server, and the tickets in it, carry on.
func setupOnExternalNATS(t *testing.T) *testBundle {
	t.Helper()
	ns, err := natsembed.Start(context.Background(), natsembed.Config{StoreDir: t.TempDir(), Port: -1, User: "atelier", Password: "s3cret"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	return setupWith(t, func(c *Config) {
		twoDeliveries(c)
		c.NATSURL, c.NATSUser, c.NATSPassword = ns.ClientURL(), "atelier", "s3cret"
	})
}

// stopBroker stops the broker alone: its NATS (external) and the bundle's
// connection stay.
func (tb *testBundle) stopBroker(t *testing.T) {
	t.Helper()
	// The pool's consumer outlives the broker: note whether it was made.
	for len(tb.broker.testSignals.poolConsumerReady.C()) > 0 {
		if <-tb.broker.testSignals.poolConsumerReady.C() == wire.DefaultPool {
			tb.poolReady = true
		}
	}
	require.NoError(t, tb.broker.Stop(context.Background()))
	tb.broker = nil
}

// loseAdvisory waits for the server's max-deliveries advisory in
// DEADTICKETS and removes it, as an embedded server killed before it
// synced the advisory would.
func (tb *testBundle) loseAdvisory(t *testing.T) {
	t.Helper()
	deadTickets, err := tb.js.Stream(tb.ctx, StreamDeadTickets)
	require.NoError(t, err)
	testutil.Eventually(t, func() bool {
		info, err := deadTickets.Info(tb.ctx)
		return err == nil && info.State.Msgs == 1
	}, "the server sent no max-deliveries advisory")
	require.NoError(t, deadTickets.Purge(tb.ctx))
}

// ticketSeq finds the job's ticket in DISPATCH.
func (tb *testBundle) ticketSeq(t *testing.T, id string) uint64 {
	t.Helper()
	dispatch, err := tb.js.Stream(tb.ctx, wire.StreamDispatch)
	require.NoError(t, err)
	info, err := dispatch.Info(tb.ctx)
	require.NoError(t, err)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		if m, err := dispatch.GetMsg(tb.ctx, seq); err == nil && strings.Contains(string(m.Data), id) {
			return seq
		}
	}
	t.Fatalf("no ticket of %s in DISPATCH", id)
	return 0
}

func (tb *testBundle) poolConsumer(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	cons, err := tb.js.Consumer(tb.ctx, wire.StreamDispatch, wire.DispatchConsumer(wire.DefaultPool))
	require.NoError(t, err)
	info, err := cons.Info(tb.ctx)
	require.NoError(t, err)
	return info
}

// A ticket that ran out of deliveries while its advisory was lost (an
// embedded server killed before DEADTICKETS synced it; here the advisory
// is removed while the broker is down) still lies in DISPATCH, and no
// delivery will ever come. Once the last pending ticket is acknowledged,
// the consumer's ack floor passes it: the periodic check finds it below
// the floor and releases the job again at once, with no agent asking.
func TestDeadTicketBelowTheAckFloorIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb := setupOnExternalNATS(t)
	tb.heartbeat(t, "a1", "boot1", 2)
	running := tb.submit(t, "user002")
	tb.awaitState(t, "user002", running, wire.StateDispatched)
	tk, runningMsg := tb.fetchTicket(t)
	require.Equal(t, running, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: running, User: "user002", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	dead := tb.submit(t, "user001")
	tb.awaitState(t, "user001", dead, wire.StateDispatched)

	tb.stopBroker(t)
	tb.handBack(t, dead)
	tb.handBack(t, dead)
	tb.noTicket(t)                                   // the server gives the ticket up
	require.NoError(t, runningMsg.DoubleAck(tb.ctx)) // the running job's agent is done with its ticket
	tb.loseAdvisory(t)
	seq := tb.ticketSeq(t, dead)
	info := tb.poolConsumer(t)
	require.LessOrEqual(t, seq, info.AckFloor.Stream)
	require.Zero(t, info.NumAckPending)

	tb.stop()
	tb.start(t)
	tb.heartbeat(t, "a1", "boot1", 2)
	tb.awaitJob(t, "user001", dead, "its second release", func(r wire.JobRecord) bool { return r.Releases == 2 })
	tb.requireMsgGone(t, wire.StreamDispatch, seq, "the dead ticket stays in DISPATCH")

	tb.report(t, wire.Report{Kind: wire.ReportSucceeded, JobID: running, User: "user002", Agent: "a1", Attempt: 1})
	tb.awaitState(t, "user002", running, wire.StateSucceeded)
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, dead, tk.JobID)
	require.Equal(t, 2, tk.Release)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: dead, User: "user001", Agent: "a1", Slot: "gpu1", Boot: "boot1"}).Action)
	require.NoError(t, msg.Ack())
}

// The same while another job's ticket is out at a running slot, taken
// after the dead one died: no acknowledgement moved the ack floor past the
// dead ticket, so the periodic check goes by the counts (a ticket in the
// stream that the consumer neither means to deliver nor waits an
// acknowledgement for) and by an agent's fetch that waits while the job
// keeps waiting. The running job's ticket is left alone.
func TestDeadTicketAboveTheAckFloorIsReleasedAgain(t *testing.T) {
	t.Parallel()
	tb := setupOnExternalNATS(t)
	tb.heartbeat(t, "a1", "boot1", 2)
	dead := tb.submit(t, "user001")
	tb.awaitState(t, "user001", dead, wire.StateDispatched)

	tb.stopBroker(t)
	tb.handBack(t, dead)
	tb.handBack(t, dead)
	tb.noTicket(t) // the server gives the ticket up
	tb.loseAdvisory(t)

	tb.stop()
	tb.start(t)
	tb.heartbeat(t, "a1", "boot1", 2)
	running := tb.submit(t, "user002")
	tb.awaitState(t, "user002", running, wire.StateDispatched)
	tk, _ := tb.fetchTicket(t)
	require.Equal(t, running, tk.JobID)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: running, User: "user002", Agent: "a1", Slot: "gpu0", Boot: "boot1"}).Action)
	seq, runningSeq := tb.ticketSeq(t, dead), tb.ticketSeq(t, running)
	info := tb.poolConsumer(t)
	require.Greater(t, seq, info.AckFloor.Stream)
	require.Equal(t, 1, info.NumAckPending)

	// The other slot's fetch waits: the check releases the dead job's
	// ticket again, and the fetch gets it.
	tk, msg := tb.fetchTicket(t)
	require.Equal(t, dead, tk.JobID)
	require.Equal(t, 2, tk.Release)
	require.Equal(t, wire.ClaimGo, tb.claim(t, wire.ClaimRequest{JobID: dead, User: "user001", Agent: "a1", Slot: "gpu1", Boot: "boot1"}).Action)
	require.NoError(t, msg.Ack())

	dispatch, err := tb.js.Stream(tb.ctx, wire.StreamDispatch)
	require.NoError(t, err)
	_, err = dispatch.GetMsg(tb.ctx, seq)
	require.ErrorIs(t, err, jetstream.ErrMsgNotFound, "the dead ticket stays in DISPATCH")
	_, err = dispatch.GetMsg(tb.ctx, runningSeq)
	require.NoError(t, err, "the running job's ticket was removed")
	r := tb.record(t, "user002", running)
	require.Equal(t, wire.StateRunning, r.State)
	require.Equal(t, 1, r.Releases)
}
