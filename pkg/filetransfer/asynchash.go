package filetransfer

import "hash"

// asyncHash feeds a hash from its own goroutine, so a transfer's worker can
// acknowledge a chunk as soon as it is on disk and write the next one while
// this one is hashed: on two cores sha256 and the staging write together
// were the receiver's critical path.
//
// Only the transfer's worker calls write, wait and stop; h may be used
// directly before start and after wait or stop.
type asyncHash struct {
	h    hash.Hash
	in   chan hashItem
	done chan struct{}
}

// hashItem is a chunk to hash, or (with ack set) a marker whose ack is
// closed once everything before it was hashed.
type hashItem struct {
	data []byte
	ack  chan struct{}
}

// newAsyncHash wraps h; depth bounds the chunks queued for hashing (and so
// the memory held beyond the one being written).
func newAsyncHash(h hash.Hash, depth int) *asyncHash {
	return &asyncHash{h: h, in: make(chan hashItem, max(depth, 1))}
}

func (a *asyncHash) start() {
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		for it := range a.in {
			if it.ack != nil {
				close(it.ack)
				continue
			}
			a.h.Write(it.data)
		}
	}()
}

// write queues data; the caller must not modify it afterwards (NATS gives
// every message its own payload buffer, so chunk data qualifies).
func (a *asyncHash) write(data []byte) { a.in <- hashItem{data: data} }

// wait returns once everything written so far is in h.
func (a *asyncHash) wait() {
	if a.done == nil {
		return
	}
	ack := make(chan struct{})
	a.in <- hashItem{ack: ack}
	<-ack
}

// stop hashes what is queued and ends the goroutine.
func (a *asyncHash) stop() {
	if a.done == nil {
		return
	}
	close(a.in)
	<-a.done
	a.done = nil
}
