package agent

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/agent/runtime"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/wire"
)

// leaseCounter is a ticket that counts the extensions of its lease.
type leaseCounter struct {
	jetstream.Msg
	extended atomic.Int32
}

func (m *leaseCounter) InProgress() error { m.extended.Add(1); return nil }

// A claim whose answer never comes (the broker recorded it and was killed
// before replying) is asked again instead of handing the ticket back, and
// the ticket's lease is kept while the slot waits: every redelivery would
// use up one of the ticket's deliveries.
func TestClaimWithoutAnswerIsAskedAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := natsembed.Start(ctx, natsembed.Config{StoreDir: filepath.Join(t.TempDir(), "nats"), Port: -1, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	broker, err := srv.Connect()
	require.NoError(t, err)
	t.Cleanup(broker.Close)
	nc, err := srv.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)

	// The broker stand-in leaves the first `silent` claims unanswered
	// and answers the next "go".
	var claims, silent atomic.Int32
	silent.Store(1)
	_, err = broker.Subscribe(wire.ClaimSubject("a1"), func(m *nats.Msg) {
		var req wire.ClaimRequest
		require.NoError(t, json.Unmarshal(m.Data, &req))
		require.Equal(t, "j1", req.JobID)
		if claims.Add(1) <= silent.Load() {
			return
		}
		data, _ := json.Marshal(wire.ClaimReply{Action: wire.ClaimGo, Attempt: 2})
		_ = m.Respond(data)
	})
	require.NoError(t, err)
	require.NoError(t, broker.Flush())

	a := &Agent{cfg: Config{ID: "a1", ClaimTimeout: 300 * time.Millisecond, RetryDelay: 10 * time.Millisecond}, nc: nc, boot: "boot1"}
	s := &slot{a: a, ep: runtime.Endpoint{Slot: "gpu0"}, ackWait: 90 * time.Millisecond, log: zerolog.Nop()}
	ticket := &leaseCounter{}
	reply, err := s.claimKeepingLease(ctx, ticket, wire.Ticket{JobID: "j1", User: "user001"}, 1, false)
	require.NoError(t, err)
	require.Equal(t, wire.ClaimGo, reply.Action)
	require.Equal(t, int32(2), claims.Load(), "asked twice")
	require.GreaterOrEqual(t, ticket.extended.Load(), int32(3), "the lease was kept while the first claim went unanswered")

	// A broker that never answers: the slot gives up after claimTries.
	claims.Store(0)
	silent.Store(1000)
	_, err = s.claimKeepingLease(ctx, ticket, wire.Ticket{JobID: "j1", User: "user001"}, 1, false)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, int32(claimTries), claims.Load())
}
