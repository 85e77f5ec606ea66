package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
)

// atelier-broker serve --ticket-check-interval paces the check that
// releases a waiting job's ticket again when it vanished from DISPATCH:
// with 300 ms, a ticket acknowledged without a run (the test plays the
// agent) is replaced within the 5 s this test waits, where the default
// 30 s would not be.
func TestBrokerTicketCheckIntervalFlag(t *testing.T) {
	t.Parallel()
	s := startCore(t, []string{"user001"}, "--ticket-check-interval", "300ms")
	ctx := context.Background()
	nc, err := nats.Connect(s.natsURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)

	hb := wire.Heartbeat{Agent: "a1", Pool: wire.DefaultPool, Boot: "boot1", At: time.Now(),
		Slots: []wire.SlotStatus{{ID: "gpu0", State: wire.SlotIdle}}}
	data, _ := json.Marshal(hb)
	require.NoError(t, nc.Publish(wire.HeartbeatSubject("a1"), data))
	id := uuid.NewString()
	data, _ = json.Marshal(wire.Job{ID: id, User: "user001", Pool: wire.DefaultPool, SubmittedAt: time.Now(),
		Prompt: json.RawMessage(`{"1":{"class_type":"EmptyImage","inputs":{}}}`), OutputsToExecute: []string{"1"}})
	_, err = js.Publish(ctx, wire.SubmitSubject("user001"), data, jetstream.WithMsgID(wire.SubmitMsgID("user001", id, 0)))
	require.NoError(t, err)

	var cons jetstream.Consumer
	testutil.Eventually(t, func() bool {
		cons, err = js.Consumer(ctx, wire.StreamDispatch, wire.DispatchConsumer(wire.DefaultPool))
		return err == nil
	}, "the broker made no consumer for the pool")
	next := func() wire.Ticket {
		t.Helper()
		// 5 s, not WaitTimeout: what the test shows is that the ticket
		// comes back well before the default interval (30 s).
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err, "no ticket within 5 s")
		var tk wire.Ticket
		require.NoError(t, json.Unmarshal(msg.Data(), &tk))
		require.NoError(t, msg.DoubleAck(ctx)) // acknowledged, not run: the ticket is gone
		return tk
	}
	tk := next()
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 1, tk.Release)
	tk = next()
	require.Equal(t, id, tk.JobID)
	require.Equal(t, 2, tk.Release)
}

// A ticket check interval that is not positive is refused, from the flag
// or from its environment variable, before the broker starts.
func TestBrokerTicketCheckIntervalRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"--ticket-check-interval", "-1s"}, "", "--ticket-check-interval (ATELIER_TICKET_CHECK_INTERVAL) must be positive, got -1s"},
		{nil, "ATELIER_TICKET_CHECK_INTERVAL=0s", "--ticket-check-interval (ATELIER_TICKET_CHECK_INTERVAL) must be positive, got 0s"},
	} {
		cmd := exec.Command(filepath.Join(binDir, "atelier-broker"), append([]string{"serve", "--data", dir,
			"--nats-listen", "127.0.0.1:-1", "--http", "127.0.0.1:0"}, c.args...)...)
		cmd.Env = cleanEnv()
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, err := cmd.CombinedOutput()
		require.Error(t, err, string(out))
		require.Contains(t, string(out), c.want)
	}
}
