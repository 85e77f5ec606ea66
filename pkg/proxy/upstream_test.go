package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/pkg/registry"
)

// fakeUI stands in for a participant's ComfyUI UI: it records what reached
// it and applies ComfyUI's loopback origin check.
type fakeUI struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // "METHOD escaped-path?query"
}

func newFakeUI(t *testing.T, name string) *fakeUI {
	f := &fakeUI{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
			w.WriteHeader(http.StatusForbidden) // ComfyUI's origin check
			return
		}
		require.Empty(t, r.Header.Get("Authorization"), "the proxy's credentials stay at the proxy")
		f.mu.Lock()
		line := r.Method + " " + r.URL.EscapedPath()
		if r.URL.RawQuery != "" {
			line += "?" + r.URL.RawQuery
		}
		f.seen = append(f.seen, line)
		f.mu.Unlock()
		if r.URL.Path == "/internal/logs/ws" && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			_ = c.Write(r.Context(), websocket.MessageText, []byte(name))
			_ = c.Close(websocket.StatusNormalClosure, "")
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(name + " " + r.URL.EscapedPath()))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeUI) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.seen
	f.seen = nil
	return out
}

// TestFrontendSessionThroughProxy replays the requests a ComfyUI frontend
// makes when it loads, queues, cancels and re-opens history
// (comfyui-api.md §1.1, §2): the execution routes are answered by the proxy,
// everything else reaches the participant's own UI upstream, escaped paths
// intact, origin check passing.
func TestFrontendSessionThroughProxy(t *testing.T) {
	t.Parallel()
	alicesUI, bobsUI := newFakeUI(t, "alice-ui"), newFakeUI(t, "bob-ui")
	var up *UIUpstream
	b := setup(t, withConfig(func(c *Config) {
		var err error
		up, err = NewUIUpstream(UIUpstreamConfig{Registry: c.Registry, Template: "http://127.0.0.1:{port}"})
		require.NoError(t, err)
		c.Fallback = up
	}))
	fb := b.fakeBroker()
	// Alice's UI by explicit URL, Bob's by the port template.
	_, err := b.reg.Update(b.ctx, alice, func(u *registry.User) error { u.UIUpstream = alicesUI.srv.URL; return nil })
	require.NoError(t, err)
	bobPort := bobsUI.srv.Listener.Addr().String()
	bobPort = bobPort[strings.LastIndexByte(bobPort, ':')+1:]
	_, err = b.reg.Update(b.ctx, bob, func(u *registry.User) error {
		u.Port = atoi(t, bobPort)
		return nil
	})
	require.NoError(t, err)

	origin := "Origin"
	proxyOrigin := b.url
	get := func(user, path string) response {
		return b.do(http.MethodGet, "/"+user+path, user, "", origin, proxyOrigin)
	}
	// Page load (frontend 1.2x): static files and user data from the UI,
	// API routes from the proxy.
	for _, path := range []string{"/", "/assets/index-abc.js", "/extensions/core/x.js", "/templates/index.json",
		"/api/users", "/api/settings", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true",
		"/api/userdata/workflows%2Fmy%20flow.json", "/api/i18n", "/internal/logs/raw", "/api/extensions",
		"/api/workflow_templates"} {
		r := get(alice, path)
		require.Equal(t, http.StatusOK, r.status, path)
		require.True(t, strings.HasPrefix(string(r.body), "alice-ui "), "%s went to %s", path, r.body)
	}
	seen := alicesUI.take()
	require.Contains(t, seen, "GET /api/userdata/workflows%2Fmy%20flow.json", "%2F stays escaped")
	require.Contains(t, seen, "GET /api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
	require.Contains(t, seen, "GET /")
	for _, path := range []string{"/api/object_info", "/api/embeddings", "/api/system_stats", "/api/features",
		"/api/queue", "/api/history?max_items=200", "/api/jobs?status=completed,failed,cancelled&limit=200&offset=0",
		"/api/jobs?status=in_progress,pending"} {
		r := get(alice, path)
		require.Equal(t, http.StatusOK, r.status, path)
		require.False(t, strings.HasPrefix(string(r.body), "alice-ui"), path)
	}
	require.Empty(t, alicesUI.take(), "execution routes never reach the UI")

	// Saving a workflow and a setting go to the UI too.
	r := b.do(http.MethodPost, "/"+alice+"/api/userdata/workflows%2Fa.json?overwrite=true", alice, "{}", origin, proxyOrigin)
	require.Equal(t, http.StatusOK, r.status)
	r = b.do(http.MethodPost, "/"+alice+"/api/settings/Comfy.X", alice, "1", origin, proxyOrigin)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, []string{"POST /api/userdata/workflows%2Fa.json?overwrite=true", "POST /api/settings/Comfy.X"}, alicesUI.take())

	// Queue, cancel, re-open history.
	r = b.do(http.MethodPost, "/"+alice+"/api/prompt", alice, `{"prompt": `+testPrompt+`, "client_id": "c1"}`, origin, proxyOrigin)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	r = b.do(http.MethodPost, "/"+alice+"/api/queue", alice, `{"delete": ["x"]}`, origin, proxyOrigin)
	require.Equal(t, http.StatusOK, r.status)
	r = b.do(http.MethodPost, "/"+alice+"/api/interrupt", alice, `{}`, origin, proxyOrigin)
	require.Equal(t, http.StatusOK, r.status)
	require.Len(t, fb.take(t), 2)
	r = get(alice, "/api/history?max_items=200")
	require.Equal(t, http.StatusOK, r.status)

	// Bob's requests reach Bob's UI (port template), never Alice's.
	r = get(bob, "/api/settings")
	require.Equal(t, "bob-ui /api/settings", string(r.body))
	require.Empty(t, alicesUI.take())
	// Alice may not use Bob's prefix at all.
	r = b.do(http.MethodGet, "/"+bob+"/api/settings", alice, "")
	require.Equal(t, http.StatusForbidden, r.status)
	require.Len(t, bobsUI.take(), 1)

	// A participant without an upstream gets 404, not someone else's UI.
	r = get(carol, "/api/settings")
	require.Equal(t, http.StatusNotFound, r.status)

	// WebSockets other than /ws are forwarded.
	h := http.Header{"Authorization": {basic(alice)}, "Origin": {proxyOrigin}}
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(b.url, "http")+"/"+alice+"/internal/logs/ws",
		&websocket.DialOptions{HTTPHeader: h})
	require.NoError(t, err)
	_, data, err := c.Read(context.Background())
	require.NoError(t, err)
	require.Equal(t, "alice-ui", string(data))
	_ = c.CloseNow()
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n := 0
	for _, c := range s {
		require.True(t, c >= '0' && c <= '9')
		n = n*10 + int(c-'0')
	}
	return n
}

func TestUIUpstreamConfig(t *testing.T) {
	t.Parallel()
	_, err := NewUIUpstream(UIUpstreamConfig{})
	require.ErrorIs(t, err, ErrInvalidConfig)
	b := setup(t)
	_, err = NewUIUpstream(UIUpstreamConfig{Registry: b.reg, Template: "ftp://x"})
	require.ErrorIs(t, err, ErrInvalidConfig)
	_, err = NewUIUpstream(UIUpstreamConfig{Registry: b.reg, Template: "http://comfy-{user}:8188"})
	require.NoError(t, err)
}
