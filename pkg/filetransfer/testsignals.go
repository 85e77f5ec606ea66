package filetransfer

import "github.com/atelier-run/atelier/internal/testsignal"

// receiverSignals are the points of a Receiver's transfers a test can wait
// for (internal/testsignal) instead of polling the staging directory. Each
// is off unless a test Inits it before Start.
type receiverSignals struct {
	// ChunkReceived: a chunk was staged (Offset: where the staged data
	// now ends). One per chunk: a test of a large file leaves it off.
	ChunkReceived testsignal.Signal[transferSignal]
	// Resumed: an open found data staged for the same bytes and carries on
	// from it (Offset: where it resumes).
	Resumed testsignal.Signal[resumeSignal]
	// ChecksumMismatch: a commit found the staged data's sha256 wrong; the
	// transfer starts over from 0.
	ChecksumMismatch testsignal.Signal[transferSignal]
	// Committed: the file is in the store (Offset: its size).
	Committed testsignal.Signal[transferSignal]
	// Aborted: the sender aborted a transfer held open; its staged data
	// is gone. (An abort of one only on disk removes the files unsignalled.)
	Aborted testsignal.Signal[transferSignal]
	// Closed: a transfer's worker ended (the receiver stopped, the
	// transfer was idle, evicted or replaced); Offset is what was staged.
	Closed testsignal.Signal[transferSignal]
}

// transferSignal is one event of one transfer.
type transferSignal struct {
	Agent      string
	TransferID string
	Offset     int64
}

// resumeSignal is a transfer resumed from staged data.
type resumeSignal struct {
	transferSignal
	// FromHashState: the hash state saved when the transfer was closed
	// was used; false: the staged data was read again to hash it.
	FromHashState bool
}

// signalOf is t's event at its current offset.
func (t *transfer) signalOf() transferSignal {
	return transferSignal{Agent: t.agent, TransferID: t.id, Offset: t.offset.Load()}
}
