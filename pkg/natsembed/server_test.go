package natsembed

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestStartRequiresStoreDir(t *testing.T) {
	t.Parallel()
	_, err := Start(context.Background(), Config{Port: -1})
	require.ErrorContains(t, err, "StoreDir")
}

func TestStartJetStreamReadyAndRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()

	s, err := Start(ctx, Config{StoreDir: dir, Port: -1, User: "u", Password: "p"})
	require.NoError(t, err)
	nc, err := s.Connect()
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}})
	require.NoError(t, err)
	_, err = js.Publish(ctx, "t", []byte("hello"))
	require.NoError(t, err)

	// A TCP client needs the credentials.
	_, err = nats.Connect(s.ClientURL())
	require.Error(t, err)
	tcp, err := nats.Connect(s.ClientURLWithAuth())
	require.NoError(t, err)
	tcp.Close()

	nc.Close()
	require.NoError(t, s.Stop(ctx))

	s, err = Start(ctx, Config{StoreDir: dir, Port: -1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	nc, err = s.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err = jetstream.New(nc)
	require.NoError(t, err)
	st, err := js.Stream(ctx, "T")
	require.NoError(t, err)
	msg, err := st.GetLastMsgForSubject(ctx, "t")
	require.NoError(t, err)
	require.Equal(t, "hello", string(msg.Data))
}
