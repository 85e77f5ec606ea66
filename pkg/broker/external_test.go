package broker

import (
	"context"
	"testing"

	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// The broker also runs as a client of a NATS it does not embed (a real
// cluster at scale), with credentials.
func TestExternalNATS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns, err := natsembed.Start(ctx, natsembed.Config{StoreDir: t.TempDir(), Port: -1, User: "atelier", Password: "s3cret"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })

	b, err := New(Config{
		DataDir: t.TempDir(), NATSURL: ns.ClientURL(), NATSUser: "atelier", NATSPassword: "s3cret",
		HTTPAddr: "127.0.0.1:0", Limits: wire.SmallLimits(), Logger: zerolog.Nop(),
	})
	require.NoError(t, err)
	b.testSignals.Init()
	require.NoError(t, b.Start(ctx))
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	require.Equal(t, ns.ClientURL(), b.ClientURL())

	nc, err := nats.Connect(ns.ClientURLWithAuth())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	for _, name := range []string{wire.StreamSubmit, wire.StreamDispatch, wire.StreamReports} {
		_, err := js.Stream(ctx, name)
		require.NoError(t, err, name)
	}
	_, err = js.KeyValue(ctx, wire.BucketJobs)
	require.NoError(t, err)

	// Provisioning again (a second start) is idempotent.
	_, err = wire.Provision(ctx, js, wire.SmallLimits())
	require.NoError(t, err)

	tb := &testBundle{broker: b, nc: nc, js: js, ctx: ctx}
	tb.jobs, err = js.KeyValue(ctx, wire.BucketJobs)
	require.NoError(t, err)
	id := tb.submit(t, "user001")
	tb.awaitState(t, "user001", id, wire.StateQueued)
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := New(Config{})
	require.ErrorContains(t, err, "DataDir is required")
	_, err = New(Config{DataDir: "x", Prefetch: -1})
	require.ErrorContains(t, err, "Prefetch")
}
