package comfysim

import (
	"container/heap"
	"time"

	"github.com/atelier-run/atelier/pkg/comfyapi"
)

// queueItem is ComfyUI's queue tuple (number, prompt_id, prompt, extra_data,
// outputs_to_execute).
type queueItem struct {
	// number is the priority; numberJSON is how it is echoed: an int for
	// the server counter, a float (5.0) for a client-supplied number,
	// because ComfyUI converts that with float().
	number     float64
	numberJSON any
	id         string
	prompt     object
	extra      object
	outputs    []string
	// created is when the prompt was queued, for the jobs API's
	// create_time (newer ComfyUI keeps it in extra_data.create_time).
	created time.Time
}

// tuple renders the 5-element array of /queue and history "prompt".
func (q *queueItem) tuple() []any {
	return []any{q.numberJSON, q.id, q.prompt, q.extra, anyStrings(q.outputs)}
}

// clientID returns extra_data.client_id: the sid that receives the
// prompt's execution events ("" and false when absent or null).
func (q *queueItem) clientID() (string, bool) {
	v, ok := q.extra.Get("client_id")
	if !ok || v == nil {
		return "", false
	}
	return pyStr(v), true
}

// promptHeap is the min-heap of pending items, ordered like Python tuples:
// number first, prompt_id second. /queue returns it in heap-array order.
type promptHeap []*queueItem

func (h promptHeap) Len() int { return len(h) }
func (h promptHeap) Less(i, j int) bool {
	if h[i].number != h[j].number {
		return h[i].number < h[j].number
	}
	return h[i].id < h[j].id
}
func (h promptHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *promptHeap) Push(x any)   { *h = append(*h, x.(*queueItem)) }
func (h *promptHeap) Pop() any {
	old := *h
	n := len(old)
	it := old[n-1]
	*h = old[:n-1]
	return it
}

// remainingLocked is queue_remaining: pending plus running. Caller holds mu.
func (s *Server) remainingLocked() int {
	n := len(s.pending)
	if s.running != nil {
		n++
	}
	return n
}

// statusData is the data of a "status" message.
func statusData(remaining int) object {
	return object{{"status", object{{"exec_info", object{{"queue_remaining", remaining}}}}}}
}

// broadcastStatusLocked sends the queue_updated() status broadcast. Caller
// holds mu so the count and the send order agree.
func (s *Server) broadcastStatusLocked() {
	s.hub.sendJSON("", comfyapi.MsgStatus, statusData(s.remainingLocked()))
}

// enqueueLocked pushes an accepted prompt and wakes the worker.
func (s *Server) enqueueLocked(it *queueItem) {
	if it.created.IsZero() {
		it.created = time.Now()
	}
	s.created[it.id] = it.created
	heap.Push(&s.pending, it)
	s.broadcastStatusLocked()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// deletePendingLocked removes the first pending item with the id, as
// PromptQueue.delete_queue_item (including its double status broadcast when
// the queue becomes empty through wipe_queue).
func (s *Server) deletePendingLocked(id string) bool {
	for i, it := range s.pending {
		if it.id != id {
			continue
		}
		if len(s.pending) == 1 {
			s.pending = nil
			s.broadcastStatusLocked()
		} else {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			heap.Init(&s.pending)
		}
		s.broadcastStatusLocked()
		return true
	}
	return false
}

// nextItem blocks until an item is pending (or ctx ends), then moves it to
// running and broadcasts status, as PromptQueue.get.
func (s *Server) nextItem(doneCh <-chan struct{}) *queueItem {
	for {
		s.mu.Lock()
		if len(s.pending) > 0 {
			it := heap.Pop(&s.pending).(*queueItem)
			s.running = it
			s.broadcastStatusLocked()
			s.mu.Unlock()
			return it
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-doneCh:
			return nil
		}
	}
}
