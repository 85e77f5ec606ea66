// Package filetransfer moves files between GPU agents and mello over core
// NATS: outputs from an agent into the broker's file store (Send → Receiver)
// and inputs from the file store to an agent (Fetch ← Server).
//
// JetStream's Object Store is not used for this: it fails intermittently on
// GB-sized files and has neither Range nor resume (see nats-notes.md).
// Instead a small request/reply protocol streams fixed-size chunks with a
// window of several chunks in flight, a CRC-32C per chunk, the sha256 of the
// whole file checked before the file is stored, and resume from the offset
// the receiver already has.
//
// # Upload (agent → broker), subjects under a prefix such as "file.put"
//
//	<prefix>.<agent>.open    JSON OpenRequest  → JSON OpenReply (offset already received)
//	<prefix>.<agent>.chunk   raw bytes + headers Atelier-Transfer, Atelier-Offset,
//	                         Atelier-Crc32c, Atelier-Gen  → JSON ChunkReply
//	<prefix>.<agent>.commit  JSON TransferRequest (with the sha256 when the open
//	                         had none) → JSON CommitReply (the stored Ref)
//	<prefix>.<agent>.abort   JSON TransferRequest → JSON CommitReply (empty)
//
// # Download (broker → agent), subjects under a prefix such as "file.get"
//
//	<prefix>.<agent>.stat    JSON StatRequest → JSON StatReply (size, sha256)
//	<prefix>.<agent>.chunk   JSON ChunkRequest → raw bytes + headers Atelier-Offset,
//	                         Atelier-Crc32c (or Atelier-Error on failure)
//
// The agent id is a subject token so that NATS permissions can restrict an
// agent to "<prefix>.<its id>.>", and the broker trusts the token, not the
// payload, for who is asking.
//
// Every error reply carries a code that maps to a sentinel error (see
// RemoteError), so callers use errors.Is.
package filetransfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// Default subject prefixes.
const (
	DefaultPutPrefix = "file.put"
	DefaultGetPrefix = "file.get"
)

// DefaultChunkSize is the chunk size asked for; the effective size is capped
// by the connection's max payload minus 8 KiB for headers (1016 KiB on a
// server with NATS's default 1 MiB, 2 MiB on the embedded broker's 8 MiB).
// Large chunks cut the per-chunk costs (a reply, a hand-off between
// goroutines, a few syscalls) of multi-GB videos; 4 MiB ones cost 5 % less
// CPU than 2 MiB ones but each chunk in flight is held several times over
// in the broker's memory (see DefaultWindowBytes).
const DefaultChunkSize = 2 << 20

// Header names of chunk messages.
const (
	HeaderTransfer = "Atelier-Transfer"
	HeaderOffset   = "Atelier-Offset"
	HeaderCRC32C   = "Atelier-Crc32c"
	HeaderGen      = "Atelier-Gen"
	HeaderError    = "Atelier-Error"
)

// Sentinel errors. Errors coming back from the other side are *RemoteError
// values that unwrap to one of these (or to a filestore sentinel).
var (
	// ErrForbidden: the agent may not write (or read) that file.
	ErrForbidden = errors.New("forbidden")
	// ErrUnknownTransfer: the receiver has no such transfer (evicted,
	// committed long ago, or never opened); the sender opens it again.
	ErrUnknownTransfer = errors.New("unknown transfer")
	// ErrOffsetMismatch: a chunk did not start where the receiver expected.
	ErrOffsetMismatch = errors.New("offset mismatch")
	// ErrChunkChecksum: a chunk's CRC-32C did not match its data.
	ErrChunkChecksum = errors.New("chunk checksum mismatch")
	// ErrBusy: the receiver is at a limit; try again later.
	ErrBusy = errors.New("busy")
	// ErrBadRequest: a malformed request.
	ErrBadRequest = errors.New("bad request")
	// ErrRemote: any other failure on the other side.
	ErrRemote = errors.New("remote error")
	// ErrTimeout: the other side did not answer in time, after all retries.
	ErrTimeout = errors.New("transfer timed out")
)

// Error codes on the wire.
const (
	codeInvalidName     = "invalid_name"
	codeNotFound        = "not_found"
	codeForbidden       = "forbidden"
	codeChecksum        = "checksum"
	codeChunkChecksum   = "chunk_checksum"
	codeOffset          = "offset"
	codeUnknownTransfer = "unknown_transfer"
	codeBusy            = "busy"
	codeQuota           = "quota"
	codeBadRequest      = "bad_request"
	codeInternal        = "internal"
)

var codeErrors = map[string]error{
	codeInvalidName:     filestore.ErrInvalidName,
	codeNotFound:        filestore.ErrNotFound,
	codeForbidden:       ErrForbidden,
	codeChecksum:        filestore.ErrChecksumMismatch,
	codeChunkChecksum:   ErrChunkChecksum,
	codeOffset:          ErrOffsetMismatch,
	codeUnknownTransfer: ErrUnknownTransfer,
	codeBusy:            ErrBusy,
	codeQuota:           filestore.ErrQuotaExceeded,
	codeBadRequest:      ErrBadRequest,
	codeInternal:        ErrRemote,
}

// WireError is the error object of a reply.
type WireError struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

// RemoteError is an error reported by the other side. errors.Is(err,
// ErrBusy) and friends work through Unwrap.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return "remote: " + e.Code + ": " + e.Message }

// Unwrap returns the sentinel for the code.
func (e *RemoteError) Unwrap() error {
	if err, ok := codeErrors[e.Code]; ok {
		return err
	}
	return ErrRemote
}

func (w *WireError) err() error {
	if w == nil {
		return nil
	}
	return &RemoteError{Code: w.Code, Message: w.Message}
}

// toWire maps a local error to its wire form.
func toWire(err error) *WireError {
	if err == nil {
		return nil
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return &WireError{Code: re.Code, Message: re.Message}
	}
	for _, code := range []string{codeInvalidName, codeNotFound, codeForbidden, codeChecksum, codeChunkChecksum,
		codeOffset, codeUnknownTransfer, codeBusy, codeBadRequest, codeQuota} {
		if errors.Is(err, codeErrors[code]) {
			return &WireError{Code: code, Message: err.Error()}
		}
	}
	if errors.Is(err, filestore.ErrExists) {
		return &WireError{Code: codeInternal, Message: err.Error()}
	}
	// Internal details (paths on mello) stay in the broker's log.
	return &WireError{Code: codeInternal, Message: "internal error"}
}

// OpenRequest starts or resumes an upload. SHA256 "" means the sender
// hashes while sending and gives the sum at commit.
type OpenRequest struct {
	TransferID string        `json:"transfer_id"`
	Ref        filestore.Ref `json:"ref"`
	Size       int64         `json:"size"`
	SHA256     string        `json:"sha256"`
}

// OpenReply tells the sender where to continue and the receiver's limits.
type OpenReply struct {
	Offset    int64      `json:"offset"`
	ChunkSize int        `json:"chunk_size,omitempty"`
	Window    int        `json:"window,omitempty"`
	Error     *WireError `json:"error,omitempty"`
}

// ChunkReply acknowledges a chunk: Offset is the number of contiguous bytes
// the receiver now has, i.e. where the next chunk must start. On an offset or
// checksum error the sender goes back to Offset.
type ChunkReply struct {
	Offset int64      `json:"offset"`
	Gen    uint64     `json:"gen"`
	Error  *WireError `json:"error,omitempty"`
}

// TransferRequest names a transfer to commit or abort. A commit of a
// transfer opened without a sha256 carries it.
type TransferRequest struct {
	TransferID string `json:"transfer_id"`
	SHA256     string `json:"sha256,omitempty"`
}

// CommitReply returns where the file was stored. The name may differ from
// the requested one (ComfyUI's "name (1).ext" rule) when another file with
// different content had it.
type CommitReply struct {
	Ref    filestore.Ref `json:"ref"`
	Size   int64         `json:"size"`
	SHA256 string        `json:"sha256"`
	Error  *WireError    `json:"error,omitempty"`
}

// StatRequest asks for a file's size and sha256.
type StatRequest struct {
	Ref filestore.Ref `json:"ref"`
}

// StatReply describes the file and the largest chunk the server serves.
type StatReply struct {
	Info      filestore.Info `json:"info"`
	ChunkSize int            `json:"chunk_size,omitempty"`
	Error     *WireError     `json:"error,omitempty"`
}

// ChunkRequest asks for Length bytes at Offset.
type ChunkRequest struct {
	Ref    filestore.Ref `json:"ref"`
	Offset int64         `json:"offset"`
	Length int           `json:"length"`
}

// Meta describes a file to upload.
type Meta struct {
	// TransferID identifies the upload across retries, reconnections and
	// agent restarts; derive it deterministically (see TransferID) so a
	// restarted agent resumes instead of starting over.
	TransferID string
	// Ref is where the file should go, as the participant sees it.
	Ref filestore.Ref
	// Size in bytes and SHA256 (hex) of the whole file. SHA256 "": Send
	// computes it while sending and tells the receiver at commit.
	Size   int64
	SHA256 string
}

// TransferID derives a transfer id from the parts that identify an upload,
// e.g. TransferID(jobID, strconv.Itoa(attempt), outputName).
func TransferID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:40]
}

// validID reports whether s is usable as an agent id or transfer id: a
// single subject token and file name component of [A-Za-z0-9_-], 1–128
// characters.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// ValidAgentID reports whether id can be an agent id in subjects.
func ValidAgentID(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: agent id %q: 1-128 characters of A-Z a-z 0-9 - _", ErrBadRequest, id)
	}
	return nil
}

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// agentFromSubject extracts the agent token of "<prefix>.<agent>.<verb>".
func agentFromSubject(prefix, subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", false
	}
	agent, _, ok := strings.Cut(rest, ".")
	return agent, ok && validID(agent)
}

// flush makes sure the server has our subscriptions; nats.go insists on a
// deadline, so one is added when ctx has none.
func flush(ctx context.Context, nc *nats.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return nc.FlushWithContext(ctx)
}

func respondJSON(m *nats.Msg, v any) error {
	if m.Reply == "" {
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return m.Respond(data)
}

func isNoResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

// retryable reports whether an error is worth another attempt after a pause.
func retryable(err error) bool {
	switch {
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrNoResponders), errors.Is(err, ErrBusy),
		errors.Is(err, ErrTimeout), errors.Is(err, ErrUnknownTransfer), errors.Is(err, ErrOffsetMismatch),
		errors.Is(err, ErrChunkChecksum), errors.Is(err, ErrRemote):
		return true
	}
	return false
}
