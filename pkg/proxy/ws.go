package proxy

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/atelier-run/atelier/pkg/comfyapi"
	"github.com/atelier-run/atelier/pkg/wire"
)

// maxClientMessage bounds what a browser may send on the socket: ComfyUI
// understands only the small feature_flags message.
const maxClientMessage = 64 << 10

// frame is one WebSocket message.
type frame struct {
	binary bool
	data   []byte
}

func textFrame(typ string, data any) frame {
	b, err := marshalJSON(struct {
		Type string `json:"type"`
		Data any    `json:"data"`
	}{typ, data})
	if err != nil {
		// Only our own values and already-valid RawMessages get here.
		b = []byte(`{"type": "` + typ + `", "data": {}}`)
	}
	return frame{data: b}
}

// statusFrame is ComfyUI's status message; sid is set only on the first
// message of a socket.
func statusFrame(remaining int, sid string) frame {
	data := map[string]any{"status": map[string]any{"exec_info": map[string]any{"queue_remaining": remaining}}}
	if sid != "" {
		data["sid"] = sid
	}
	return textFrame(comfyapi.MsgStatus, data)
}

// socket is one open WebSocket of a participant.
type socket struct {
	sid  string
	conn *websocket.Conn
	out  chan frame
	// gone is closed when the socket leaves its view; the writer then
	// closes the connection with goneCode/goneReason.
	gone       chan struct{}
	goneOnce   sync.Once
	goneCode   websocket.StatusCode
	goneReason string
	// previewMetadata: the client advertised supports_preview_metadata, so
	// previews go out as binary event 4 rather than event 1.
	previewMetadata atomic.Bool
	// jobs is what this socket's client id was sent per job, shared by
	// the sockets of one client id (guarded by the view's mu).
	jobs map[string]*sentState
}

// maxTrackedJobsPerSocket bounds what a socket remembers about messages it
// was sent (see sentState); entries are dropped when a job ends.
const maxTrackedJobsPerSocket = 256

// sentState records the once-per-job messages a socket got, from either
// source (live events or JOBS changes), so neither repeats the other.
type sentState struct {
	start    bool
	terminal bool
	executed map[string]struct{}
}

func (s *socket) track(job string) *sentState {
	st, ok := s.jobs[job]
	if !ok {
		if len(s.jobs) >= maxTrackedJobsPerSocket {
			for k := range s.jobs { // drop an arbitrary entry
				delete(s.jobs, k)
				break
			}
		}
		st = &sentState{executed: map[string]struct{}{}}
		s.jobs[job] = st
	}
	return st
}

// sendLocked queues f for s without blocking; a socket whose queue is full
// is dropped so it cannot hold up the participant's other sockets.
func (v *userView) sendLocked(s *socket, f frame) {
	select {
	case <-s.gone:
	case s.out <- f:
	default:
		v.p.log.Warn().Str("user", v.user).Str("sid", s.sid).Msg("dropping slow WebSocket")
		v.removeSocketLocked(s, websocket.StatusPolicyViolation, "too slow to keep up")
	}
}

func (v *userView) removeSocketLocked(s *socket, code websocket.StatusCode, reason string) {
	delete(v.sockets, s)
	if v.bySID[s.sid] == s {
		delete(v.bySID, s.sid)
		if len(s.jobs) == 0 {
			delete(v.sent, s.sid)
		}
	}
	s.goneOnce.Do(func() {
		s.goneCode, s.goneReason = code, reason
		close(s.gone)
	})
	v.lastUsed = time.Now()
	v.p.testSignals.socketRemoved.Signal(s.sid)
}

func (v *userView) removeSocket(s *socket, code websocket.StatusCode, reason string) {
	v.mu.Lock()
	v.removeSocketLocked(s, code, reason)
	v.mu.Unlock()
}

func (v *userView) closeSockets(reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closed = true
	for s := range v.sockets {
		v.removeSocketLocked(s, websocket.StatusTryAgainLater, reason)
	}
}

// reserveSocket counts a socket about to be accepted against the
// participant's limit.
func (v *userView) reserveSocket(limit int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.reserveSocketLocked(limit)
}

func (v *userView) reserveSocketLocked(limit int) bool {
	if v.closed || len(v.sockets)+v.reserved >= limit {
		return false
	}
	v.reserved++
	return true
}

// addSocket registers an accepted socket and queues its first messages:
// status with the sid and, when this sid's job is running a node, executing
// (comfyui-api.md §3.1). Both happen under the view's lock, so no JOBS
// change or live event can overtake them.
func (v *userView) addSocket(s *socket) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reserved--
	if v.closed {
		return false
	}
	// What was sent is kept per client id, not per socket: a reconnecting
	// tab (same client id) is not sent again what its last socket got,
	// and takes over the prompt's messages like ComfyUI; an older socket
	// still open keeps only the broadcasts.
	if m := v.sent[s.sid]; m != nil {
		s.jobs = m
	} else {
		v.sent[s.sid] = s.jobs
	}
	s.out <- statusFrame(v.pending, s.sid)
	sentExecuting := false
	for _, e := range v.jobs {
		// A prefetched job ComfyUI started the moment the one before it
		// ended is still dispatched in JOBS until its agent reports it
		// started, but its live events already say what runs.
		executing := e.rec.State == wire.StateRunning || (e.rec.State == wire.StateDispatched && e.execNode != "")
		if e.rec.ClientID != s.sid || !executing {
			continue
		}
		// The job started before this socket: "executing" below stands in
		// for execution_start (§3.1), which must not come late.
		s.track(e.rec.ID).start = true
		if e.execNode != "" && !sentExecuting {
			sentExecuting = true
			s.out <- textFrame(comfyapi.MsgExecuting, map[string]any{"node": e.execNode})
		}
	}
	v.bySID[s.sid] = s
	v.sockets[s] = struct{}{}
	return true
}

func (v *userView) unreserveSocket() {
	v.mu.Lock()
	v.reserved--
	v.lastUsed = time.Now()
	v.mu.Unlock()
}

// handleWS serves /ws?clientId=X: ComfyUI's WebSocket, fed by the
// participant's view.
func (p *Proxy) handleWS(w http.ResponseWriter, r *http.Request) {
	sess := sessionFrom(r.Context())
	sid := r.URL.Query().Get("clientId")
	if len(sid) > maxClientIDLen {
		writePlain(w, http.StatusBadRequest, "clientId too long")
		return
	}
	if sid == "" {
		sid = newSID()
	}
	// The place is taken as the request stops waiting for the view, so
	// the view cannot be evicted as idle before the socket is registered.
	reserved := false
	v, err := p.views.getThen(r.Context(), sess.User, func(v *userView) {
		reserved = v.reserveSocketLocked(p.cfg.MaxSocketsPerUser)
	})
	if err != nil {
		p.unavailable(w, r, err)
		return
	}
	if !reserved {
		writePlain(w, http.StatusTooManyRequests, "too many open WebSockets for this participant; close some tabs")
		return
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: p.cfg.WSOriginPatterns})
	if err != nil {
		// Accept has answered the request (403 for a foreign origin …).
		v.unreserveSocket()
		p.log.Debug().Err(err).Str("user", sess.User).Msg("WebSocket upgrade refused")
		return
	}
	conn.SetReadLimit(maxClientMessage)
	// Two slots more than configured: the first messages are queued
	// before the socket becomes visible to the loop.
	s := &socket{
		sid:  sid,
		conn: conn,
		out:  make(chan frame, p.cfg.WSSendQueue+2),
		gone: make(chan struct{}),
		jobs: map[string]*sentState{},
	}
	if !v.addSocket(s) {
		_ = conn.Close(websocket.StatusTryAgainLater, "reconnect")
		return
	}
	p.wg.Add(1)
	go p.writeLoop(v, s)
	p.readLoop(v, s)
}

// readLoop reads the client's messages until the socket ends. Only a first
// feature_flags message means anything (§3.1).
func (p *Proxy) readLoop(v *userView, s *socket) {
	// Not cancelled when the socket is dropped: cancelling a Read closes
	// the connection at once, while the writer's Close sends the reason.
	ctx := v.ctx
	first := true
	for {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			code := websocket.CloseStatus(err)
			if code == -1 {
				code = websocket.StatusGoingAway
			}
			v.removeSocket(s, code, "")
			return
		}
		if !first || typ != websocket.MessageText {
			continue
		}
		first = false
		var msg struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if json.Unmarshal(data, &msg) != nil || msg.Type != comfyapi.MsgFeatureFlags {
			continue
		}
		var flags struct {
			SupportsPreviewMetadata bool `json:"supports_preview_metadata"`
		}
		_ = json.Unmarshal(msg.Data, &flags)
		s.previewMetadata.Store(flags.SupportsPreviewMetadata)
		v.mu.Lock()
		v.sendLocked(s, textFrame(comfyapi.MsgFeatureFlags, p.features()))
		v.mu.Unlock()
	}
}

// writeLoop writes queued frames, each bounded by WSWriteTimeout, until the
// socket leaves its view.
func (p *Proxy) writeLoop(v *userView, s *socket) {
	defer p.wg.Done()
	for {
		select {
		case <-s.gone:
			if s.goneReason != "" {
				// We ended it (slow, replaced, stopping): say why.
				_ = s.conn.Close(s.goneCode, s.goneReason)
			}
			_ = s.conn.CloseNow()
			return
		case <-v.ctx.Done():
			_ = s.conn.Close(websocket.StatusGoingAway, "server stopping")
			_ = s.conn.CloseNow()
			return
		case f := <-s.out:
			typ := websocket.MessageText
			if f.binary {
				typ = websocket.MessageBinary
			}
			ctx, cancel := context.WithTimeout(v.ctx, p.cfg.WSWriteTimeout)
			err := s.conn.Write(ctx, typ, f.data)
			cancel()
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					p.log.Debug().Err(err).Str("user", v.user).Str("sid", s.sid).Msg("WebSocket write failed")
				}
				v.removeSocket(s, websocket.StatusPolicyViolation, "write timed out")
				_ = s.conn.CloseNow()
				return
			}
		}
	}
}

// newSID is ComfyUI's sid for a socket without clientId: uuid4().hex.
func newSID() string {
	u := uuid.New()
	const hexdigits = "0123456789abcdef"
	b := make([]byte, 32)
	for i, c := range u {
		b[2*i] = hexdigits[c>>4]
		b[2*i+1] = hexdigits[c&0xf]
	}
	return string(b)
}

// adaptBinary turns a preview-with-metadata frame (event 4) into a plain
// preview frame (event 1) for a client that did not advertise
// supports_preview_metadata, like ComfyUI does. Other frames pass as is. A
// malformed frame yields nil (dropped).
func adaptBinary(b []byte, clientHasMetadata bool) []byte {
	if len(b) < 4 {
		return nil
	}
	if clientHasMetadata || binary.BigEndian.Uint32(b) != comfyapi.BinPreviewImageWithMetadata {
		return b
	}
	if len(b) < 8 {
		return nil
	}
	n := binary.BigEndian.Uint32(b[4:8])
	if uint64(n) > uint64(len(b)-8) {
		return nil
	}
	var meta struct {
		ImageType string `json:"image_type"`
	}
	_ = json.Unmarshal(b[8:8+n], &meta)
	format := uint32(comfyapi.ImageFormatJPEG)
	if meta.ImageType == "image/png" {
		format = comfyapi.ImageFormatPNG
	}
	img := b[8+n:]
	out := make([]byte, 8+len(img))
	binary.BigEndian.PutUint32(out[0:4], comfyapi.BinPreviewImage)
	binary.BigEndian.PutUint32(out[4:8], format)
	copy(out[8:], img)
	return out
}
