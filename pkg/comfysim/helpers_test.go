package comfysim

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/comfyview/webpenc"
)

// testBundle is what setup returns: a started simulator and its URL.
type testBundle struct {
	sim *Server
	url string
	dir string
}

// setup starts a simulator on a random loopback port with no step delay.
func setup(t *testing.T, mutate ...func(*Config)) *testBundle {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{Dir: dir, StepDelay: -1, WebP: webpenc.Encoder{}}
	for _, m := range mutate {
		m(&cfg)
	}
	sim, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		require.NoError(t, sim.Close())
	})
	require.NoError(t, sim.Start(ctx, "127.0.0.1:0"))
	return &testBundle{sim: sim, url: sim.URL(), dir: dir}
}

// workflow loads a testdata workflow as a raw JSON object.
func workflow(t *testing.T, name string) json.RawMessage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

// post sends a JSON body and returns status and body.
func (b *testBundle) post(t *testing.T, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case nil:
		rd = http.NoBody
	case string:
		rd = bytes.NewBufferString(v)
	case []byte:
		rd = bytes.NewReader(v)
	default:
		data, err := json.Marshal(v)
		require.NoError(t, err)
		rd = bytes.NewReader(data)
	}
	resp, err := http.Post(b.url+path, "application/json", rd)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, data
}

// get fetches a path and returns status, body and headers.
func (b *testBundle) get(t *testing.T, path string) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Get(b.url + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, data, resp.Header
}

// getJSON fetches a path and decodes it into v, requiring 200.
func (b *testBundle) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	status, data, _ := b.get(t, path)
	require.Equal(t, http.StatusOK, status, string(data))
	require.NoError(t, json.Unmarshal(data, v), string(data))
}

// submit queues a prompt and returns its id.
func (b *testBundle) submit(t *testing.T, prompt json.RawMessage, clientID string) string {
	t.Helper()
	body := map[string]any{"prompt": prompt}
	if clientID != "" {
		body["client_id"] = clientID
	}
	status, data := b.post(t, "/prompt", body)
	require.Equal(t, http.StatusOK, status, string(data))
	var resp struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(data, &resp))
	return resp.PromptID
}

// upload posts a file to /upload/image with extra form fields.
func (b *testBundle) upload(t *testing.T, path, name string, content []byte, fields map[string]string) (int, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("image", name)
	require.NoError(t, err)
	_, err = fw.Write(content)
	require.NoError(t, err)
	for k, v := range fields {
		require.NoError(t, mw.WriteField(k, v))
	}
	require.NoError(t, mw.Close())
	resp, err := http.Post(b.url+path, mw.FormDataContentType(), &buf)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, data
}

// wsMsg is one received WebSocket message.
type wsMsg struct {
	Type   string          `json:"type"`
	Data   json.RawMessage `json:"data"`
	Binary []byte          `json:"-"`
}

type testWS struct {
	t    *testing.T
	conn *websocket.Conn
}

// dial opens /ws (clientId may be "").
func (b *testBundle) dial(t *testing.T, path string) *testWS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+b.url[len("http"):]+path, nil)
	require.NoError(t, err)
	conn.SetReadLimit(64 << 20)
	t.Cleanup(func() { _ = conn.CloseNow() })
	return &testWS{t: t, conn: conn}
}

// execWait bounds a wait for the simulator to execute (the next message
// of a prompt, its history entry): milliseconds on a quiet machine, but a
// node took 3 s between two messages under -race with the package's
// parallel tests on a loaded 2-core one.
const execWait = 30 * time.Second

// next reads one message (execWait timeout).
func (w *testWS) next() wsMsg {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execWait)
	defer cancel()
	typ, data, err := w.conn.Read(ctx)
	require.NoError(w.t, err)
	if typ == websocket.MessageBinary {
		return wsMsg{Binary: data}
	}
	var m wsMsg
	require.NoError(w.t, json.Unmarshal(data, &m), string(data))
	return m
}

// until reads messages up to and including the final "executing" with a
// null node, returning them all.
func (w *testWS) until(promptID string) []wsMsg {
	w.t.Helper()
	var out []wsMsg
	for {
		m := w.next()
		out = append(out, m)
		if m.Type == "executing" {
			var d struct {
				Node     *string `json:"node"`
				PromptID string  `json:"prompt_id"`
			}
			require.NoError(w.t, json.Unmarshal(m.Data, &d))
			if d.Node == nil && d.PromptID == promptID {
				return out
			}
		}
	}
}

func types(msgs []wsMsg) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Type
		if m.Binary != nil {
			out[i] = "<binary>"
		}
	}
	return out
}

func find(msgs []wsMsg, typ string) []wsMsg {
	var out []wsMsg
	for _, m := range msgs {
		if m.Type == typ {
			out = append(out, m)
		}
	}
	return out
}
