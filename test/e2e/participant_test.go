package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// participant is one person's ComfyUI client talking to the proxy.
type participant struct {
	t    *testing.T
	base string // http://host:port/<user>
	user string
	pass string
}

func (s *system) participant(user string) *participant {
	return &participant{t: s.t, base: s.proxyURL + "/" + user, user: user, pass: s.password}
}

func (p *participant) do(method, path string, body []byte) (int, []byte) {
	p.t.Helper()
	req, err := http.NewRequest(method, p.base+path, bytes.NewReader(body))
	require.NoError(p.t, err)
	req.SetBasicAuth(p.user, p.pass)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(p.t, err)
	return resp.StatusCode, b
}

func workflow(t *testing.T, name string) json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "workflows", name))
	require.NoError(t, err)
	return b
}

// queue posts a prompt and returns its id.
func (p *participant) queue(prompt json.RawMessage, clientID string) string {
	p.t.Helper()
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "client_id": clientID})
	code, resp := p.do(http.MethodPost, "/prompt", body)
	require.Equal(p.t, http.StatusOK, code, string(resp))
	var r struct {
		PromptID   string         `json:"prompt_id"`
		Number     float64        `json:"number"`
		NodeErrors map[string]any `json:"node_errors"`
	}
	require.NoError(p.t, json.Unmarshal(resp, &r))
	require.NotEmpty(p.t, r.PromptID)
	require.Empty(p.t, r.NodeErrors)
	return r.PromptID
}

// historyEntry returns the history entry of id, or nil while there is none.
func (p *participant) historyEntry(id string) map[string]json.RawMessage {
	p.t.Helper()
	code, resp := p.do(http.MethodGet, "/history/"+id, nil)
	require.Equal(p.t, http.StatusOK, code, string(resp))
	var h map[string]map[string]json.RawMessage
	require.NoError(p.t, json.Unmarshal(resp, &h))
	return h[id]
}

// awaitHistory polls until id has a history entry.
func (p *participant) awaitHistory(id string, within time.Duration) map[string]json.RawMessage {
	p.t.Helper()
	var entry map[string]json.RawMessage
	require.Eventually(p.t, func() bool {
		entry = p.historyEntry(id)
		return entry != nil
	}, within, 20*time.Millisecond, "no history entry for %s", id)
	return entry
}

// wsMessage is one WebSocket message as a ComfyUI client sees it.
type wsMessage struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// dial opens the participant's WebSocket.
func (p *participant) dial(ctx context.Context, clientID string) *websocket.Conn {
	p.t.Helper()
	url := "ws" + p.base[len("http"):] + "/ws?clientId=" + clientID
	h := http.Header{}
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass)))
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	require.NoError(p.t, err)
	c.SetReadLimit(16 << 20)
	p.t.Cleanup(func() { c.CloseNow() })
	return c
}

// read returns the next JSON message (binary frames are skipped).
func read(ctx context.Context, t *testing.T, c *websocket.Conn) wsMessage {
	t.Helper()
	for {
		typ, b, err := c.Read(ctx)
		require.NoError(t, err)
		if typ != websocket.MessageText {
			continue
		}
		var m wsMessage
		require.NoError(t, json.Unmarshal(b, &m), string(b))
		return m
	}
}

// outputImage is one item of a history output.
type outputImage struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

func (p *participant) view(img outputImage) (int, []byte) {
	p.t.Helper()
	q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}
	return p.do(http.MethodGet, "/view?"+q.Encode(), nil)
}
