package brokerapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerapi"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/wire"
)

const adminToken = "brokerapi-test-token-0123456789"

var (
	admin       = wire.Caller{User: "teacher", Role: wire.RoleInstructor}
	participant = wire.Caller{User: "user001", Role: wire.RoleParticipant}
)

// testBundle is a real broker (embedded NATS, HTTP admin API) and a
// client of it over each transport.
type testBundle struct {
	ctx     context.Context
	broker  *broker.Broker
	js      jetstream.JetStream
	clients map[string]*brokerapi.Client // transport name → client
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*testutil.WaitTimeout())
	t.Cleanup(cancel)
	b, err := broker.New(broker.Config{DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Limits: wire.SmallLimits(), AdminToken: adminToken, TickInterval: 50 * time.Millisecond, Logger: zerolog.Nop()})
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx))
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	nc, err := nats.Connect(b.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return &testBundle{ctx: ctx, broker: b, js: js, clients: map[string]*brokerapi.Client{
		"nats": brokerapi.New(brokerapi.NATSTransport{Conn: nc}),
		"http": brokerapi.New(brokerapi.HTTPTransport{URL: b.HTTPURL(), Token: adminToken}),
	}}
}

// submit publishes a job as the proxy does and waits until the broker
// lists it in its queues.
func (tb *testBundle) submit(t *testing.T, user string) string {
	t.Helper()
	id := uuid.NewString()
	data, _ := json.Marshal(wire.Job{ID: id, User: user, Pool: wire.DefaultPool, SubmittedAt: time.Now(),
		Prompt: json.RawMessage(`{"1":{"class_type":"EmptyImage","inputs":{}}}`), OutputsToExecute: []string{"1"}})
	_, err := tb.js.Publish(tb.ctx, wire.SubmitSubject(user), data, jetstream.WithMsgID(id))
	require.NoError(t, err)
	testutil.EventuallyNoError(t, func() error {
		q, err := tb.clients["nats"].Queues(tb.ctx, wire.QueuesRequest{Caller: admin})
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(q.Jobs, func(j wire.QueuedJob) bool { return j.ID == id }) {
			return errors.New("not in the queues yet")
		}
		return nil
	}, "the broker never took in job %s", id)
	return id
}

// Each operation against the real broker, over both transports: what it
// does, and each refusal as its sentinel.
func TestClientAgainstTheBroker(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	for _, name := range []string{"nats", "http"} {
		c := tb.clients[name]
		t.Run(name, func(t *testing.T) {
			ctx := tb.ctx
			require.NoError(t, c.Pause(ctx, wire.PauseRequest{Caller: admin}))
			q, err := c.Queues(ctx, wire.QueuesRequest{Caller: admin})
			require.NoError(t, err)
			require.True(t, q.Paused)

			require.NoError(t, c.SetPolicy(ctx, wire.PolicyRequest{Caller: admin, Policy: "fifo"}))
			err = c.SetPolicy(ctx, wire.PolicyRequest{Caller: admin, Policy: "lottery"})
			requireAPIError(t, err, brokerapi.ErrInvalid, `unknown policy "lottery"`)

			id := tb.submit(t, "user001")
			require.NoError(t, c.Bump(ctx, wire.BumpRequest{Caller: admin, User: "user001", JobID: id}))
			err = c.Bump(ctx, wire.BumpRequest{Caller: admin, User: "user001", JobID: "no-such-job"})
			requireAPIError(t, err, brokerapi.ErrNotFound, "no queued job no-such-job")

			err = c.Drain(ctx, wire.DrainRequest{Caller: admin, Agent: "no-such-agent"})
			requireAPIError(t, err, brokerapi.ErrNotFound, "agent no-such-agent is not connected")
			err = c.Undrain(ctx, wire.DrainRequest{Caller: admin, Agent: "bad agent"})
			requireAPIError(t, err, brokerapi.ErrInvalid, "bad agent")

			affected, err := c.Cancel(ctx, wire.CancelRequest{Caller: admin, User: "user001", JobIDs: []string{id}})
			require.NoError(t, err)
			require.Equal(t, []string{id}, affected)
			affected, err = c.Interrupt(ctx, wire.InterruptRequest{Caller: admin, User: "user001"})
			require.NoError(t, err)
			require.Empty(t, affected, "nothing of user001's runs")
			_, err = c.Forget(ctx, wire.ForgetRequest{Caller: admin, User: "../x", All: true})
			requireAPIError(t, err, brokerapi.ErrInvalid, "user")

			require.NoError(t, c.Resume(ctx, wire.PauseRequest{Caller: admin}))
			q, err = c.Queues(ctx, wire.QueuesRequest{Caller: admin})
			require.NoError(t, err)
			require.False(t, q.Paused)
			require.Equal(t, "fifo", q.Policy)
		})
	}
}

// A participant's caller is refused what is not theirs (NATS: the caller
// is whoever the request names); over HTTP a wrong token is.
func TestClientForbidden(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	c := tb.clients["nats"]
	err := c.Pause(tb.ctx, wire.PauseRequest{Caller: participant})
	requireAPIError(t, err, brokerapi.ErrForbidden, "instructors only")
	id := tb.submit(t, "user002")
	_, err = c.Cancel(tb.ctx, wire.CancelRequest{Caller: participant, User: "user002", JobIDs: []string{id}})
	requireAPIError(t, err, brokerapi.ErrForbidden, "user001 may not act on user002's jobs")

	// The participant's own job is theirs to cancel.
	own := tb.submit(t, "user001")
	affected, err := c.Cancel(tb.ctx, wire.CancelRequest{Caller: participant, User: "user001", JobIDs: []string{own}})
	require.NoError(t, err)
	require.Equal(t, []string{own}, affected)

	wrong := brokerapi.New(brokerapi.HTTPTransport{URL: tb.broker.HTTPURL(), Token: "not-the-token"})
	err = wrong.Pause(tb.ctx, wire.PauseRequest{})
	requireAPIError(t, err, brokerapi.ErrForbidden, "admin token required")
	q, err := tb.clients["http"].Queues(tb.ctx, wire.QueuesRequest{})
	require.NoError(t, err)
	require.False(t, q.Paused, "the refused pause changed nothing")
}

// No broker answers: ErrUnavailable, not a refusal.
func TestClientUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// A NATS without a broker: no responders.
	ns, err := natsembed.Start(ctx, natsembed.Config{StoreDir: filepath.Join(t.TempDir(), "nats"), Port: -1, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	nc, err := ns.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	_, err = brokerapi.New(brokerapi.NATSTransport{Conn: nc}).Queues(ctx, wire.QueuesRequest{Caller: admin})
	requireUnavailable(t, err)

	// A responder that never answers: no answer within the timeout.
	sub, err := nc.SubscribeSync(wire.BrokerAPISubject(wire.OpPause))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	err = brokerapi.New(brokerapi.NATSTransport{Conn: nc}, brokerapi.WithTimeout(50*time.Millisecond)).Pause(ctx, wire.PauseRequest{Caller: admin})
	requireUnavailable(t, err)
	_, err = sub.NextMsg(testutil.WaitTimeout())
	require.NoError(t, err, "the request did go out")

	// The caller's own context ending is that, not an unavailable broker.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = brokerapi.New(brokerapi.NATSTransport{Conn: nc}).Pause(cctx, wire.PauseRequest{Caller: admin})
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, brokerapi.ErrUnavailable)

	// An HTTP address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, err = brokerapi.New(brokerapi.HTTPTransport{URL: "http://" + addr, Token: adminToken}).Queues(ctx, wire.QueuesRequest{})
	requireUnavailable(t, err)

	// A gateway in front of a broker that is down.
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	t.Cleanup(gw.Close)
	_, err = brokerapi.New(brokerapi.HTTPTransport{URL: gw.URL, Token: adminToken}).Queues(ctx, wire.QueuesRequest{})
	requireUnavailable(t, err)
}

// The codes the broker answers map to their sentinels and back; an
// unknown code is internal.
func TestReplyCodes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		code string
	}{
		{brokerapi.ErrForbidden, wire.CodeForbidden},
		{brokerapi.ErrNotFound, wire.CodeNotFound},
		{brokerapi.ErrInvalid, wire.CodeInvalid},
		{brokerapi.ErrInternal, wire.CodeInternal},
	} {
		wrapped := errors.Join(errors.New("context"), errors.New("x: "+c.err.Error()))
		require.Equal(t, wire.CodeInternal, brokerapi.Reply(wrapped).Code, "no sentinel: internal")
		r := brokerapi.Reply(errors.Join(c.err, errors.New("why")))
		require.Equal(t, c.code, r.Code)
		back := brokerapi.ErrorOf(r)
		require.ErrorIs(t, back, c.err)
		require.Equal(t, r.Error, back.Error())
		for _, other := range []error{brokerapi.ErrForbidden, brokerapi.ErrNotFound, brokerapi.ErrInvalid, brokerapi.ErrInternal} {
			if other != c.err {
				require.NotErrorIs(t, back, other)
			}
		}
	}
	require.Equal(t, wire.APIReply{}, brokerapi.Reply(nil))
	require.NoError(t, brokerapi.ErrorOf(wire.APIReply{}))
	require.ErrorIs(t, brokerapi.ErrorOf(wire.APIReply{Error: "odd", Code: "teapot"}), brokerapi.ErrInternal)
	require.Equal(t, http.StatusNotFound, brokerapi.HTTPStatus(wire.CodeNotFound))
	require.Equal(t, http.StatusOK, brokerapi.HTTPStatus(""))
}

func requireAPIError(t *testing.T, err, sentinel error, inMessage string) {
	t.Helper()
	require.ErrorIs(t, err, sentinel)
	var ae *brokerapi.APIError
	require.ErrorAs(t, err, &ae)
	require.Contains(t, err.Error(), inMessage)
	require.NotErrorIs(t, err, brokerapi.ErrUnavailable)
}

func requireUnavailable(t *testing.T, err error) {
	t.Helper()
	require.ErrorIs(t, err, brokerapi.ErrUnavailable)
	var ae *brokerapi.APIError
	require.False(t, errors.As(err, &ae), "no broker refused anything: %v", err)
}
