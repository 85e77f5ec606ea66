package agent

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/atelier-run/atelier/pkg/comfyapi"
)

// outboxLossyBytes bounds the lossy events (progress, previews) an outbox
// holds behind a shipping output; beyond it they are dropped, as the live
// relay is lossy by design. Events that carry state (executing,
// executed, errors) are never dropped: there are a few per node.
const outboxLossyBytes = 32 << 20

// outbox relays a run's events to the participant in ComfyUI's order
// while outputs ship off the relay loop. A file on a slow uplink can take
// longer than the event watchdog: the relay loop must go on reading
// ComfyUI (proof that it is alive, and the moment it frees the GPU) while
// the file ships. An "executed" message goes out once its node's files
// are in mello, with the names the participant sees, and every event
// after it waits behind it, so the participant sees ComfyUI's order.
// Nodes ship one at a time, in the order ComfyUI finished them. With
// nothing shipping, events go out at once.
type outbox struct {
	r      *run
	cancel context.CancelFunc
	wake   chan struct{}
	done   chan struct{} // the worker ended (closed and empty, failed, or stopped)
	failed chan struct{} // closed at the first error

	mu         sync.Mutex
	items      []outItem
	lossyBytes int
	busy       bool // the worker handles an item
	closed     bool
	err        error
	dropped    int
}

type outItem struct {
	ship   bool // an "executed" message whose files must ship first
	typ    string
	data   json.RawMessage
	binary []byte
}

func (it outItem) lossy() bool {
	return !it.ship && (it.typ == "" || it.typ == comfyapi.MsgProgress || it.typ == comfyapi.MsgProgressState)
}

func (it outItem) size() int { return len(it.data) + len(it.binary) }

func (r *run) startOutbox(ctx context.Context) *outbox {
	ctx, cancel := context.WithCancel(ctx)
	o := &outbox{
		r: r, cancel: cancel, wake: make(chan struct{}, 1),
		done: make(chan struct{}), failed: make(chan struct{}),
	}
	go o.work(ctx)
	return o
}

// relay sends an event, or queues it behind what is shipping.
func (o *outbox) relay(typ string, data json.RawMessage, binary []byte) {
	o.put(outItem{typ: typ, data: data, binary: binary})
}

// ship queues a finished node's "executed" message: its files ship, then
// it goes out.
func (o *outbox) ship(data json.RawMessage) {
	o.put(outItem{ship: true, typ: comfyapi.MsgExecuted, data: data})
}

func (o *outbox) put(it outItem) {
	o.mu.Lock()
	if !it.ship && len(o.items) == 0 && !o.busy {
		o.mu.Unlock()
		o.r.relay(it.typ, it.data, it.binary)
		return
	}
	if it.lossy() {
		if o.lossyBytes+it.size() > outboxLossyBytes {
			o.dropped++
			o.mu.Unlock()
			return
		}
		o.lossyBytes += it.size()
	}
	o.items = append(o.items, it)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) work(ctx context.Context) {
	defer close(o.done)
	for {
		o.mu.Lock()
		for len(o.items) == 0 {
			o.busy = false
			if o.closed {
				o.mu.Unlock()
				return
			}
			o.mu.Unlock()
			select {
			case <-o.wake:
			case <-ctx.Done():
				return
			}
			o.mu.Lock()
		}
		it := o.items[0]
		o.items[0] = outItem{}
		o.items = o.items[1:]
		if it.lossy() {
			o.lossyBytes -= it.size()
		}
		o.busy = true
		o.mu.Unlock()

		if !it.ship {
			o.r.relay(it.typ, it.data, it.binary)
			continue
		}
		out, err := o.r.handleExecuted(ctx, it.data)
		if err != nil {
			o.mu.Lock()
			o.err = err
			o.mu.Unlock()
			close(o.failed)
			return
		}
		o.r.relay(it.typ, out, nil)
	}
}

// wait lets everything queued go out (outputs shipped) and returns the
// first shipping error.
func (o *outbox) wait(ctx context.Context) error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	select {
	case <-o.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dropped > 0 {
		o.r.log.Debug().Int("dropped", o.dropped).Msg("live events dropped behind a slow ship")
	}
	return o.err
}

// stop abandons what is left and waits for the worker.
func (o *outbox) stop() {
	o.cancel()
	<-o.done
}

func (o *outbox) error() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}
