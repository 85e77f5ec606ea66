package filetransfer

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Staged chunks are written with direct I/O where the file system allows
// it: the data goes from the receiver's buffer to the disk without passing
// through the page cache. Buffered writes cost the receiver's worker most
// of its time (the kernel allocates and fills a page-cache page per 4 KiB,
// then writes them back); direct writes cost a copy into an aligned buffer
// and wait for the device, leaving the CPU to the hashing and the NATS
// client, and leave nothing for the commit's fsync to write.
//
// Direct I/O needs the buffer, the offset and the length aligned to the
// device's block size. Offsets are multiples of the chunk size (itself a
// multiple of 4 KiB on every NATS max payload in use), so only a file's
// last chunk, or a chunk after an unaligned resume, goes through the page
// cache instead, with its writeback started at once.

// directAlign is the alignment direct writes need (the largest logical
// block size in common use).
const directAlign = 4096

// directBuffers is how many aligned buffers the receiver's transfers share:
// a write holds one for the copy and the write only, so two keep two
// transfers' disks busy at once; more would only hold memory.
const directBuffers = 2

// alignedBuffers is the receiver's set of aligned buffers, made on first
// use (a sync.Pool would drop them at each GC and churn chunk-sized
// allocations).
type alignedBuffers struct {
	once sync.Once
	free chan []byte
	size int
}

// get returns a directAlign-aligned buffer of the chunk size, waiting for
// one to be free.
func (a *alignedBuffers) get() []byte {
	a.once.Do(func() {
		a.free = make(chan []byte, directBuffers)
		for range directBuffers {
			b := make([]byte, a.size+directAlign)
			skip := int(-uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
			a.free <- b[skip : skip+a.size]
		}
	})
	return <-a.free
}

func (a *alignedBuffers) put(b []byte) { a.free <- b[:a.size] }

// writeAt writes a chunk to the staging file, directly when it can.
func (t *transfer) writeAt(p []byte, off int64) error {
	if t.direct != nil && off%directAlign == 0 && len(p)%directAlign == 0 && len(p) <= t.r.aligned.size {
		buf := t.r.aligned.get()[:len(p)]
		copy(buf, p)
		_, err := t.direct.WriteAt(buf, off)
		t.r.aligned.put(buf)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		// The file system took the open but refuses the write: buffered
		// from now on.
		t.direct.Close()
		t.direct = nil
	}
	if _, err := t.f.WriteAt(p, off); err != nil {
		return err
	}
	end := off + int64(len(p))
	switch {
	case t.direct != nil:
		// An odd chunk among direct ones.
		startWriteback(t.f, off, int64(len(p)))
	case end-t.flushed >= writebackBytes || end == t.meta.Size:
		startWriteback(t.f, t.flushed, end-t.flushed)
		t.flushed = end
	}
	return nil
}

// closeFiles closes the staging file's descriptors.
func (t *transfer) closeFiles() {
	if t.direct != nil {
		t.direct.Close()
		t.direct = nil
	}
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

// useFile makes f (open read-write) the transfer's staging file and opens
// the direct descriptor beside it.
func (t *transfer) useFile(f *os.File) {
	t.f = f
	t.flushed = 0
	if !t.r.cfg.BufferedStaging {
		t.direct = openDirect(f.Name())
	}
}
