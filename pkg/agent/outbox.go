package agent

import (
	"context"
	"encoding/json"
	"sync"
)

// shipQueue is how many finished nodes may wait for their outputs to ship
// before the relay of ComfyUI's events waits for the shipper (it then
// resumes at once, and the watchdog counts none of that wait).
const shipQueue = 32

// shipper ships the outputs of finished nodes off the relay loop: a file
// on a slow uplink can take longer than the event watchdog, and meanwhile
// ComfyUI's progress must still reach the participant and prove ComfyUI
// alive. Nodes ship one at a time in the order ComfyUI finished them; the
// "executed" message of each goes out once its files are in mello, with
// the names the participant sees.
type shipper struct {
	r      *run
	queue  chan json.RawMessage
	cancel context.CancelFunc
	done   chan struct{} // the goroutine ended (queue closed and drained, or failed)

	mu     sync.Mutex
	err    error
	failed chan struct{} // closed at the first error
}

func (r *run) startShipper(ctx context.Context) *shipper {
	ctx, cancel := context.WithCancel(ctx)
	sh := &shipper{
		r: r, queue: make(chan json.RawMessage, shipQueue), cancel: cancel,
		done: make(chan struct{}), failed: make(chan struct{}),
	}
	go sh.loop(ctx)
	return sh
}

func (sh *shipper) loop(ctx context.Context) {
	defer close(sh.done)
	for {
		var data json.RawMessage
		select {
		case <-ctx.Done():
			return
		case d, ok := <-sh.queue:
			if !ok {
				return
			}
			data = d
		}
		out, err := sh.r.handleExecuted(ctx, data)
		if err != nil {
			sh.mu.Lock()
			sh.err = err
			sh.mu.Unlock()
			close(sh.failed)
			return
		}
		sh.r.relay("executed", out, nil)
	}
}

// add queues a finished node's "executed" message. It waits only when
// shipQueue nodes are already waiting.
func (sh *shipper) add(ctx context.Context, data json.RawMessage) error {
	select {
	case sh.queue <- data:
		return nil
	case <-sh.failed:
		return sh.error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait closes the queue and waits until every queued node has shipped.
func (sh *shipper) wait(ctx context.Context) error {
	close(sh.queue)
	select {
	case <-sh.done:
		return sh.error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop abandons what is left and waits for the goroutine.
func (sh *shipper) stop() {
	sh.cancel()
	<-sh.done
}

func (sh *shipper) error() error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.err
}
