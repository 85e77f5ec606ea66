package comfysim

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/atelier-run/atelier/pkg/comfyapi"
)

// ComfyUI's WebSocket (server.py websocket_handler and send_*): one
// registry of sockets keyed by sid, JSON text frames {"type", "data"},
// binary frames with a 4-byte big-endian event type.

// maxQueuedFrames bounds a slow socket's backlog; past it the socket is
// dropped rather than letting memory grow without limit.
const maxQueuedFrames = 10000

type frame struct {
	binary bool
	data   []byte
}

// wsClient is one connected socket with an ordered outgoing queue, so the
// worker never blocks on a slow reader and frames keep their order.
type wsClient struct {
	sid  string
	conn *websocket.Conn

	mu      sync.Mutex
	queue   []frame
	notify  chan struct{}
	done    chan struct{}
	closed  bool
	flags   object // the client's feature_flags, nil until sent
	dropped bool   // set when the backlog overflowed
}

func (c *wsClient) enqueue(f frame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if len(c.queue) >= maxQueuedFrames {
		c.dropped = true
		c.closed = true
		close(c.done)
		return
	}
	c.queue = append(c.queue, f)
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *wsClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
}

// supportsPreviewMetadata reports the client's supports_preview_metadata
// feature flag.
func (c *wsClient) supportsPreviewMetadata() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, _ := c.flags.Get("supports_preview_metadata")
	b, _ := v.(bool)
	return b
}

// writeLoop drains the queue onto the connection.
func (c *wsClient) writeLoop(ctx context.Context) {
	for {
		c.mu.Lock()
		batch := c.queue
		c.queue = nil
		c.mu.Unlock()
		for _, f := range batch {
			typ := websocket.MessageText
			if f.binary {
				typ = websocket.MessageBinary
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.conn.Write(wctx, typ, f.data)
			cancel()
			if err != nil {
				c.close()
				return
			}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-c.notify:
		case <-c.done:
			// Flush what was queued before the close, then stop.
			c.mu.Lock()
			rest := c.queue
			c.queue = nil
			dropped := c.dropped
			c.mu.Unlock()
			if !dropped {
				for _, f := range rest {
					typ := websocket.MessageText
					if f.binary {
						typ = websocket.MessageBinary
					}
					wctx, cancel := context.WithTimeout(ctx, time.Second)
					_ = c.conn.Write(wctx, typ, f.data)
					cancel()
				}
			}
			return
		case <-ctx.Done():
			return
		}
	}
}

// hub is the sid -> socket registry.
type hub struct {
	mu      sync.Mutex
	clients map[string]*wsClient
	all     map[*wsClient]bool
}

func newHub() *hub {
	return &hub{clients: map[string]*wsClient{}, all: map[*wsClient]bool{}}
}

// register adds c under its sid; a previous socket with the same sid is
// dropped from the registry but not closed, as in ComfyUI.
func (h *hub) register(c *wsClient) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients[c.sid] = c
	h.all[c] = true
}

func (h *hub) unregister(c *wsClient) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.clients[c.sid] == c {
		delete(h.clients, c.sid)
	}
	delete(h.all, c)
}

func (h *hub) get(sid string) *wsClient {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clients[sid]
}

// send queues a frame for sid, or for every registered socket when sid is
// "". Frames for a sid without a socket are dropped silently.
func (h *hub) send(sid string, f frame) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if sid == "" {
		for _, c := range h.clients {
			c.enqueue(f)
		}
		return
	}
	if c, ok := h.clients[sid]; ok {
		c.enqueue(f)
	}
}

// sendJSON queues {"type": event, "data": data}.
func (h *hub) sendJSON(sid, event string, data any) {
	h.send(sid, frame{data: mustPyJSON(object{{"type", event}, {"data", data}})})
}

func (h *hub) closeAll() {
	h.mu.Lock()
	clients := make([]*wsClient, 0, len(h.all))
	for c := range h.all {
		clients = append(clients, c)
	}
	h.mu.Unlock()
	for _, c := range clients {
		c.close()
		_ = c.conn.CloseNow()
	}
}

// serverFeatures is feature_flags.get_server_features() (and GET /features).
func (s *Server) serverFeatures() object {
	return object{
		{"supports_preview_metadata", true},
		{"max_upload_size", pyFloat(float64(s.cfg.MaxUploadSize))},
	}
}

func (s *Server) handleFeatures(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.serverFeatures())
}

func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	// The origin middleware already applied ComfyUI's own check; the
	// library's same-origin check would reject legitimate proxies.
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		s.log.Debug().Err(err).Msg("websocket accept")
		return
	}
	// Outputs are sent in full by ComfyUI; the library default read limit
	// (32 KiB) is fine for the one message clients send.
	sid := r.URL.Query().Get("clientId")
	if sid == "" {
		sid = strings.ReplaceAll(uuid.NewString(), "-", "")
	}
	c := &wsClient{sid: sid, conn: conn, notify: make(chan struct{}, 1), done: make(chan struct{})}
	if d := s.cfg.WSRegisterDelay; d > 0 {
		select {
		case <-time.After(d):
		case <-s.ctx.Done():
			_ = conn.CloseNow()
			return
		}
	}

	// Register and queue the connect messages under mu, so no execution
	// event can slip in between or ahead of them.
	s.mu.Lock()
	s.hub.register(c)
	c.enqueue(frame{data: mustPyJSON(object{{"type", comfyapi.MsgStatus}, {"data", append(statusData(s.remainingLocked()), member{"sid", sid})}})})
	if s.running != nil && s.runningNode != "" {
		if owner, ok := s.running.clientID(); ok && owner == sid {
			c.enqueue(frame{data: mustPyJSON(object{{"type", comfyapi.MsgExecuting}, {"data", object{{"node", s.runningNode}}}})})
		}
	}
	s.mu.Unlock()
	s.log.Debug().Str("sid", sid).Msg("websocket connected")

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		c.writeLoop(ctx)
		cancel()
	}()
	s.readLoop(ctx, c)
	s.hub.unregister(c)
	c.close()
	_ = conn.CloseNow()
	s.log.Debug().Str("sid", sid).Msg("websocket disconnected")
}

// readLoop handles client messages: only a first feature_flags message is
// understood; everything else is ignored.
func (s *Server) readLoop(ctx context.Context, c *wsClient) {
	first := true
	for {
		typ, data, err := c.conn.Read(ctx)
		if err != nil {
			return
		}
		if typ != websocket.MessageText {
			continue
		}
		var msg struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(data, &msg); err != nil {
			// Invalid JSON does not consume the "first message" slot.
			continue
		}
		if first && msg.Type == comfyapi.MsgFeatureFlags {
			flags := object{}
			if v, err := decodeJSON(msg.Data); err == nil {
				if o, ok := v.(object); ok {
					flags = o
				}
			}
			c.mu.Lock()
			c.flags = flags
			c.mu.Unlock()
			c.enqueue(frame{data: mustPyJSON(object{{"type", comfyapi.MsgFeatureFlags}, {"data", s.serverFeatures()}})})
		}
		first = false
	}
}

// binaryFrame builds a binary frame: 4-byte big-endian event then payload.
func binaryFrame(event uint32, payload ...[]byte) frame {
	n := 4
	for _, p := range payload {
		n += len(p)
	}
	b := make([]byte, 4, n)
	binary.BigEndian.PutUint32(b, event)
	for _, p := range payload {
		b = append(b, p...)
	}
	return frame{binary: true, data: b}
}

func u32(v int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(v))
	return b
}
