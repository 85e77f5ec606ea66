package filetransfer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// sendHashBuffers is how many chunk buffers an upload hashed while it is
// sent cycles through: one being read and published, two queued for the
// hash. More would only hold memory: the hash keeps up with a sender on
// its own core, and a slower one holds the sender back through them.
const sendHashBuffers = 3

// sendHash computes the sha256 of an upload whose sum was not given
// (Meta.SHA256 ""), from the chunks the sender reads to send anyway, on
// its own goroutine: the file is read once instead of twice (a hashing
// pass, then the sending one), and the first chunk leaves at once instead
// of after a pass over a multi-GB video. Bytes are hashed in file order,
// each once: resent chunks (go-backs) are not hashed again, and a resume
// from an offset the hash has not reached yet reads the gap first
// (catchUp).
//
// Only the sending goroutine calls its methods.
type sendHash struct {
	h     hash.Hash
	size  int64
	done  int64 // bytes handed to the hash, in order from 0
	free  chan []byte
	in    chan []byte
	ended chan struct{}
	sum   string // once done == size and the hash has finished
}

func newSendHash(size int64, chunk int) *sendHash {
	s := &sendHash{
		h: sha256.New(), size: size,
		free: make(chan []byte, sendHashBuffers), in: make(chan []byte, sendHashBuffers),
		ended: make(chan struct{}),
	}
	for range sendHashBuffers {
		s.free <- make([]byte, chunk)
	}
	go func() {
		defer close(s.ended)
		for b := range s.in {
			s.h.Write(b)
			s.free <- b[:cap(b)]
		}
	}()
	return s
}

// fresh reports whether the chunk at off is the next one to hash: the
// sender reads it into a buffer of get and hands it over with put.
func (s *sendHash) fresh(off int64) bool { return off == s.done && off < s.size }

// get returns a free buffer of n bytes, waiting for the hash to finish
// with one.
func (s *sendHash) get(n int) []byte {
	b := <-s.free
	if cap(b) < n {
		// A peer allows larger chunks than the buffers were made for (a
		// server with a larger max payload after a reconnect).
		b = make([]byte, n)
	}
	return b[:n]
}

// put queues b, the bytes at s.done, for hashing; b must not be written to
// afterwards.
func (s *sendHash) put(b []byte) {
	s.done += int64(len(b))
	s.in <- b
}

// release gives back a buffer from get that was not put.
func (s *sendHash) release(b []byte) { s.free <- b[:cap(b)] }

// catchUp hashes the file up to off, reading what the stream will not
// (the part the receiver had already when the upload resumed).
func (s *sendHash) catchUp(r io.ReaderAt, off int64) error {
	for s.done < min(off, s.size) {
		b := <-s.free
		n := int(min(int64(len(b[:cap(b)])), min(off, s.size)-s.done))
		b = b[:n]
		if err := readFull(r, b, s.done); err != nil {
			s.release(b)
			return fmt.Errorf("for the sha256: %w", err)
		}
		s.put(b)
	}
	return nil
}

// readFull reads len(b) bytes at off. A file shorter than the upload's
// size is an error: the rest of b would be stale bytes, which a sum computed
// while sending would then vouch for.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil // io.ReaderAt may report io.EOF with the last bytes
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read at %d: %d of %d bytes: %w (the file is shorter than the upload's size)", off, n, len(b), err)
}

// finish waits for the hash of the whole file and returns it (hex).
func (s *sendHash) finish(r io.ReaderAt) (string, error) {
	if s.sum != "" {
		return s.sum, nil
	}
	if err := s.catchUp(r, s.size); err != nil {
		return "", err
	}
	close(s.in)
	<-s.ended
	s.sum = hex.EncodeToString(s.h.Sum(nil))
	return s.sum, nil
}

// stop ends the hash goroutine (Send returning before the commit).
func (s *sendHash) stop() {
	if s.sum == "" {
		close(s.in)
		<-s.ended
	}
}
