// Package brokerapi is the one client of the broker API (api.broker.<op>,
// pkg/wire/api.go): the proxy cancels and interrupts participants' jobs
// with it, the dashboard acts for the instructor, the CLI for the operator.
//
// A Client has a method per operation and carries each request over a
// Transport: NATSTransport (request/reply on api.broker.<op>, the proxy and
// the dashboard) or HTTPTransport (the broker's HTTP admin API with the
// admin token, the CLI). A refusal comes back as an *APIError that
// errors.Is matches to ErrForbidden, ErrNotFound, ErrInvalid or
// ErrInternal; a request no broker answered as ErrUnavailable.
//
// Every request names its caller (wire.Caller), per call: the broker
// checks it against the operation. Over HTTP the admin token is the
// caller and the broker ignores the one in the request.
package brokerapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
)

// DefaultTimeout bounds one request unless WithTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// Transport carries one request to the broker and brings its answer back.
type Transport interface {
	// RoundTrip sends op's JSON request and returns the broker's JSON
	// reply, a refusal included. Its error is for a request that got no
	// reply: ErrUnavailable when no broker answered, an *APIError when
	// the transport itself was refused (a wrong admin token).
	RoundTrip(ctx context.Context, op string, request []byte) (reply []byte, err error)
}

// Client calls the broker API over a Transport. It is safe for
// concurrent use.
type Client struct {
	transport Transport
	timeout   time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout bounds each request (default DefaultTimeout); a request
// still unanswered then is ErrUnavailable.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// New returns a Client that sends its requests over t.
func New(t Transport, opts ...Option) *Client {
	c := &Client{transport: t, timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Cancel cancels jobs at any stage and returns the ids it cancelled or
// interrupted.
func (c *Client) Cancel(ctx context.Context, req wire.CancelRequest) (affected []string, err error) {
	var reply wire.CancelReply
	err = c.call(ctx, wire.OpCancel, req, &reply, &reply.APIReply)
	return reply.Affected, err
}

// Interrupt interrupts a user's running job (req.JobID empty: whatever of
// theirs runs) and returns the ids it interrupted.
func (c *Client) Interrupt(ctx context.Context, req wire.InterruptRequest) (affected []string, err error) {
	var reply wire.CancelReply
	err = c.call(ctx, wire.OpInterrupt, req, &reply, &reply.APIReply)
	return reply.Affected, err
}

// Forget deletes final jobs from a user's history and returns the ids it
// deleted (also when it failed part way: those are gone).
func (c *Client) Forget(ctx context.Context, req wire.ForgetRequest) (affected []string, err error) {
	var reply wire.CancelReply
	err = c.call(ctx, wire.OpForget, req, &reply, &reply.APIReply)
	return reply.Affected, err
}

// Bump moves a queued job ahead of every job that is not bumped.
func (c *Client) Bump(ctx context.Context, req wire.BumpRequest) error {
	var reply wire.APIReply
	return c.call(ctx, wire.OpBump, req, &reply, &reply)
}

// Pause stops dispatch; running jobs go on.
func (c *Client) Pause(ctx context.Context, req wire.PauseRequest) error {
	var reply wire.APIReply
	return c.call(ctx, wire.OpPause, req, &reply, &reply)
}

// Resume restarts dispatch.
func (c *Client) Resume(ctx context.Context, req wire.PauseRequest) error {
	var reply wire.APIReply
	return c.call(ctx, wire.OpResume, req, &reply, &reply)
}

// SetPolicy switches the scheduling policy.
func (c *Client) SetPolicy(ctx context.Context, req wire.PolicyRequest) error {
	var reply wire.APIReply
	return c.call(ctx, wire.OpPolicy, req, &reply, &reply)
}

// Drain tells an agent to finish its jobs and take no more.
func (c *Client) Drain(ctx context.Context, req wire.DrainRequest) error {
	var reply wire.APIReply
	return c.call(ctx, wire.OpDrain, req, &reply, &reply)
}

// Undrain lets a drained agent take jobs again.
func (c *Client) Undrain(ctx context.Context, req wire.DrainRequest) error {
	var reply wire.APIReply
	return c.call(ctx, wire.OpUndrain, req, &reply, &reply)
}

// Queues lists the unfinished jobs, queued ones with their position;
// a participant caller sees only their own.
func (c *Client) Queues(ctx context.Context, req wire.QueuesRequest) (wire.QueuesReply, error) {
	var reply wire.QueuesReply
	err := c.call(ctx, wire.OpQueues, req, &reply, &reply.APIReply)
	return reply, err
}

// call sends op's request and decodes the answer into reply; common is
// reply's wire.APIReply, whose error it returns as an *APIError.
func (c *Client) call(ctx context.Context, op string, req, reply any, common *wire.APIReply) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("broker API %s: encode request: %w", op, err)
	}
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	out, err := c.transport.RoundTrip(rctx, op, data)
	if err != nil {
		if ctx.Err() != nil {
			// The caller gave up (or stops): that, not the broker, is
			// why there is no answer.
			return fmt.Errorf("broker API %s: %w", op, ctx.Err())
		}
		if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: no answer within %s: %w", ErrUnavailable, c.timeout, err)
		}
		return fmt.Errorf("broker API %s: %w", op, err)
	}
	if err := json.Unmarshal(out, reply); err != nil {
		return fmt.Errorf("broker API %s: decode reply: %w", op, err)
	}
	if err := ErrorOf(*common); err != nil {
		return fmt.Errorf("broker API %s: %w", op, err)
	}
	return nil
}
