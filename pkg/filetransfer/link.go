package filetransfer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// errDisconnected marks an attempt cut short by the connection dropping:
// Send and Fetch wait for the reconnection and resume.
var errDisconnected = errors.New("NATS connection lost")

// link is a transfer's view of its NATS connection: it hears at once when
// the connection drops (instead of after a reply timeout), tells a lost
// connection from a failure of the other side, and waits for the client
// to reconnect. One goroutine at a time reads its status channel.
type link struct {
	nc *nats.Conn
	// status reports the connection's status changes.
	status chan nats.Status
	// reconnectTimeout bounds a wait for the connection to come back.
	reconnectTimeout time.Duration
}

func newLink(nc *nats.Conn, reconnectTimeout time.Duration) *link {
	return &link{
		nc:               nc,
		status:           nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CONNECTED, nats.CLOSED),
		reconnectTimeout: reconnectTimeout,
	}
}

// close stops listening to status changes.
func (l *link) close() { l.nc.RemoveStatusListener(l.status) }

// connErr is the error of an attempt that found the connection down.
func (l *link) connErr() error {
	if l.nc.IsClosed() {
		return nats.ErrConnectionClosed
	}
	return errDisconnected
}

// down reports whether the connection is away but may come back (the
// client is reconnecting): requests now would only fill its reconnect
// buffer, and replies to those sent before are lost.
func (l *link) down() bool { return !l.nc.IsConnected() && !l.nc.IsClosed() }

// lost reports whether err came from the connection dropping (rather than
// from the other side or the file), so that the right answer is to wait
// for the client to reconnect.
func (l *link) lost(err error) bool {
	if l.nc.IsClosed() {
		return false // closed by its owner: nothing will come back
	}
	switch {
	case errors.Is(err, errDisconnected), errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return true
	}
	return retryable(err) && !l.nc.IsConnected()
}

// await waits until the client has reconnected, the connection was closed,
// ctx ends or the reconnect timeout passes.
func (l *link) await(ctx context.Context) error {
	deadline := time.NewTimer(l.reconnectTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		switch {
		case l.nc.IsConnected():
			return nil
		case l.nc.IsClosed():
			return nats.ErrConnectionClosed
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%w: NATS did not reconnect within %s", ErrTimeout, l.reconnectTimeout)
		case <-l.status:
		case <-poll.C:
		}
	}
}

// cancelOnDrop calls cancel as soon as the connection drops, until the
// returned stop is called (stop waits for the watcher to end, so the
// status channel is free again). dropped reports whether it fired.
func (l *link) cancelOnDrop(cancel context.CancelFunc) (stop func(), dropped func() bool) {
	done := make(chan struct{})
	ended := make(chan struct{})
	fired := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case _, ok := <-l.status:
				if !ok {
					return
				}
				if !l.nc.IsConnected() {
					close(fired)
					cancel()
					return
				}
			}
		}
	}()
	stop = func() {
		close(done)
		<-ended
	}
	dropped = func() bool {
		select {
		case <-fired:
			return true
		default:
			return false
		}
	}
	return stop, dropped
}
