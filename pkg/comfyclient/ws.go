package comfyclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/coder/websocket"

	"github.com/atelier-run/atelier/pkg/comfyapi"
)

// Message is one WebSocket frame. JSON frames have Type and Data; binary
// frames (previews, progress text) have Binary set to the whole frame,
// including its 4-byte big-endian event type, and Type "".
type Message struct {
	Type   string
	Data   json.RawMessage
	Binary []byte
}

// BinaryEvent returns the event number of a binary frame (1 preview,
// 3 text, 4 preview with metadata) and its payload.
func (m Message) BinaryEvent() (uint32, []byte, bool) {
	if len(m.Binary) < 4 {
		return 0, nil, false
	}
	b := m.Binary
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), b[4:], true
}

// Conn is a WebSocket to /ws.
type Conn struct {
	conn   *websocket.Conn
	sid    string
	client *Client
	// pending are messages read while waiting for something else (the
	// feature_flags answer); Next returns them first.
	pending []Message
}

// SID is the session id ComfyUI announced for this socket: the clientId
// asked for, or the one it chose.
func (c *Conn) SID() string { return c.sid }

// Dial opens /ws?clientId=clientID ("" lets the server choose the sid)
// and consumes the first "status" message, which carries the sid.
func (c *Client) Dial(ctx context.Context, clientID string) (*Conn, error) {
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/ws"
	if clientID != "" {
		u.RawQuery = url.Values{"clientId": {clientID}}.Encode()
	}
	ws, _, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.hc})
	if err != nil {
		return nil, fmt.Errorf("comfyclient: dial %s: %w", u.Redacted(), err)
	}
	// executed messages and previews can be large.
	ws.SetReadLimit(256 << 20)
	conn := &Conn{conn: ws, client: c}
	// ComfyUI registers the socket after the upgrade answer has gone out
	// and announces it with "status" (comfyui-api.md §3.1): a prompt
	// queued before that message arrives may run before the socket is
	// registered, and its first events would go nowhere. So Dial returns
	// only once the socket is known to receive the prompt's messages.
	hello, err := conn.Next(ctx)
	if err != nil {
		_ = ws.CloseNow()
		return nil, fmt.Errorf("comfyclient: waiting for the first status on %s: %w", u.Redacted(), err)
	}
	if hello.Type != comfyapi.MsgStatus {
		_ = ws.CloseNow()
		return nil, fmt.Errorf("comfyclient: %s sent %q before status", u.Redacted(), hello.Type)
	}
	var st struct {
		SID string `json:"sid"`
	}
	_ = json.Unmarshal(hello.Data, &st)
	conn.sid = st.SID
	if conn.sid == "" {
		conn.sid = clientID
	}
	return conn, nil
}

// Next reads the next message.
func (c *Conn) Next(ctx context.Context) (Message, error) {
	if len(c.pending) > 0 {
		m := c.pending[0]
		c.pending = c.pending[1:]
		return m, nil
	}
	return c.read(ctx)
}

func (c *Conn) read(ctx context.Context) (Message, error) {
	typ, data, err := c.conn.Read(ctx)
	if err != nil {
		return Message{}, fmt.Errorf("comfyclient: websocket read: %w", err)
	}
	if typ == websocket.MessageBinary {
		return Message{Binary: data}, nil
	}
	var m struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return Message{}, fmt.Errorf("comfyclient: websocket message: %w", err)
	}
	return Message{Type: m.Type, Data: m.Data}, nil
}

// SendFeatureFlags sends the client's feature flags; ComfyUI only honours
// them as the first message and answers with its own feature_flags. When
// the server has feature flags (GET /features), it waits for that answer:
// ComfyUI reads the socket concurrently with POST /prompt, so a prompt
// queued before the flags are read may run without them (its previews as
// event 1 rather than event 4, say). Messages read meanwhile, the answer
// included, are kept for Next.
func (c *Conn) SendFeatureFlags(ctx context.Context, flags map[string]any) error {
	data, err := json.Marshal(map[string]any{"type": comfyapi.MsgFeatureFlags, "data": flags})
	if err != nil {
		return err
	}
	if err := c.conn.Write(ctx, websocket.MessageText, data); err != nil {
		return fmt.Errorf("comfyclient: websocket write: %w", err)
	}
	if c.client == nil || !c.client.hasFeatureFlags(ctx) {
		return nil
	}
	for {
		m, err := c.read(ctx)
		if err != nil {
			return fmt.Errorf("comfyclient: waiting for feature_flags: %w", err)
		}
		c.pending = append(c.pending, m)
		if m.Type == comfyapi.MsgFeatureFlags {
			return nil
		}
	}
}

// Close closes the socket.
func (c *Conn) Close() error {
	return c.conn.Close(websocket.StatusNormalClosure, "")
}
