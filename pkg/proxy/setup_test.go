package proxy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
)

// Test users: two participants in the default pool, one in a pool without a
// catalog, and an instructor.
const (
	alice      = "user001"
	bob        = "user002"
	carol      = "user003" // pool "bare": no catalog
	teacher    = "teacher"
	password   = "correct horse"
	bobsPool   = wire.DefaultPool
	carolsPool = "bare"
)

// testCatalog is a small object_info: two image nodes and two output nodes.
const testObjectInfo = `{
 "EmptyImage": {"input": {"required": {"width": ["INT", {"default": 512}]}}, "output": ["IMAGE"], "name": "EmptyImage", "output_node": false},
 "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "output": ["IMAGE"], "name": "ImageInvert", "output_node": false},
 "SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "name": "SaveImage", "output_node": true},
 "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "name": "PreviewImage", "output_node": true}
}`

// testPrompt has output nodes "10" and "9" so that numeric ordering shows.
const testPrompt = `{
 "1": {"class_type": "EmptyImage", "inputs": {"width": 64}},
 "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
 "10": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
 "9": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
}`

type bundle struct {
	t      *testing.T
	ctx    context.Context
	server *natsembed.Server
	nc     *nats.Conn // the proxy's connection
	agent  *nats.Conn // the test's stand-in for broker and agents
	js     jetstream.JetStream
	res    *wire.Resources
	reg    *registry.Registry
	store  *diskstore.Store
	proxy  *Proxy
	url    string
	// signals are the proxy's test signals; those the test asked for
	// (withSignals) are on.
	signals *testSignals
}

type setupOpts struct {
	backlog   int64
	configure func(*Config)
	signals   func(*testSignals)
}

func setup(t *testing.T, opts ...func(*setupOpts)) *bundle {
	t.Helper()
	o := setupOpts{backlog: 100}
	for _, f := range opts {
		f(&o)
	}
	// Lives until the proxy has stopped; each wait is bounded by its own
	// timeout (testutil.WaitTimeout), the test by go test's.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()

	srv, err := natsembed.Start(ctx, natsembed.Config{
		StoreDir: filepath.Join(dir, "nats"), Port: -1,
		// An accounting limit: wire.Provision reserves 1 GiB for CATALOG.
		MaxMemory: 2 << 30,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	nc, err := srv.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	agent, err := srv.Connect()
	require.NoError(t, err)
	t.Cleanup(agent.Close)
	js, err := jetstream.New(agent)
	require.NoError(t, err)
	limits := wire.DefaultLimits()
	limits.Storage = jetstream.MemoryStorage
	limits.MaxBacklogPerUser = o.backlog
	limits.MaxSubmitBytes, limits.MaxReportBytes, limits.MaxJobsBytes = 16<<20, 16<<20, 16<<20
	res, err := wire.Provision(ctx, js, limits)
	require.NoError(t, err)

	layout := datalayout.Layout{Root: dir}
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath(), BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	for _, u := range []registry.User{
		{ID: alice, Role: registry.RoleParticipant},
		{ID: bob, Role: registry.RoleParticipant, Pool: bobsPool},
		{ID: carol, Role: registry.RoleParticipant, Pool: carolsPool},
		{ID: teacher, Role: registry.RoleInstructor},
	} {
		_, err := reg.Create(ctx, u, password)
		require.NoError(t, err)
	}

	cat, err := wire.EncodeCatalog(wire.Catalog{
		Pool:        wire.DefaultPool,
		At:          time.Now(),
		ObjectInfo:  json.RawMessage(testObjectInfo),
		Models:      map[string][]string{"checkpoints": {"b.safetensors", "a.safetensors"}, "loras": {}},
		Embeddings:  []string{"easynegative"},
		SystemStats: json.RawMessage(`{"system": {"os": "posix", "comfyui_version": "0.3.64"}, "devices": []}`),
	})
	require.NoError(t, err)
	_, err = res.Catalog.Put(ctx, wire.PoolCatalogKey(wire.DefaultPool), cat)
	require.NoError(t, err)

	store := diskstore.New(layout)
	cfg := Config{
		Addr:     "127.0.0.1:0",
		Conn:     nc,
		Registry: reg,
		Store:    store,
		Logger:   zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if o.configure != nil {
		o.configure(&cfg)
	}
	signals := &testSignals{}
	signals.catalogApplied.Init() // a few changes a test: always on
	if o.signals != nil {
		o.signals(signals)
	}
	cfg.testSignals = signals
	p, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
		defer scancel()
		require.NoError(t, p.Stop(sctx))
	})
	return &bundle{t: t, ctx: ctx, server: srv, nc: nc, agent: agent, js: js, res: res, reg: reg,
		store: store, proxy: p, url: p.URL(), signals: signals}
}

func withBacklog(n int64) func(*setupOpts) { return func(o *setupOpts) { o.backlog = n } }

func withConfig(f func(*Config)) func(*setupOpts) { return func(o *setupOpts) { o.configure = f } }

// awaitCatalog waits until the proxy has applied the put (or the delete)
// of pool's catalog that the test just made. It starts the proxy's
// catalog watch first if no request has: a watch that starts now reads
// the change among its initial values.
func (b *bundle) awaitCatalog(pool string, deleted bool) {
	b.t.Helper()
	_, err := b.proxy.catalogs.get(b.ctx, pool)
	require.NoError(b.t, err)
	want := catalogChange{pool: pool, deleted: deleted}
	b.signals.catalogApplied.WaitFor(b.t, fmt.Sprintf("catalog change %+v applied", want),
		func(c catalogChange) bool { return c == want })
}

// withSignals turns on the test signals init chooses, before the proxy
// starts.
func withSignals(init func(*testSignals)) func(*setupOpts) {
	return func(o *setupOpts) { o.signals = init }
}

func basic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body: %s", r.body)
	return m
}

// do sends a request as user ("" for none) and reads the whole answer.
func (b *bundle) do(method, path, user string, body string, hdr ...string) response {
	b.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(b.ctx, method, b.url+path, rd)
	require.NoError(b.t, err)
	if user != "" {
		req.Header.Set("Authorization", basic(user))
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(b.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(b.t, err)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func (b *bundle) postPrompt(user, body string) response {
	b.t.Helper()
	return b.do(http.MethodPost, "/"+user+"/prompt", user, body)
}

// putRecord writes a job record into JOBS, as the broker would.
func (b *bundle) putRecord(rec wire.JobRecord) {
	b.t.Helper()
	data, err := json.Marshal(rec)
	require.NoError(b.t, err)
	_, err = b.res.Jobs.Put(b.ctx, rec.Key(), data)
	require.NoError(b.t, err)
}

// publishEvent publishes a live event, as an agent would.
func (b *bundle) publishEvent(agent, user string, ev wire.Event) {
	b.t.Helper()
	data, err := json.Marshal(ev)
	require.NoError(b.t, err)
	require.NoError(b.t, b.agent.Publish(wire.EventSubject(agent, user, ev.JobID), data))
	require.NoError(b.t, b.agent.Flush())
}

// storeFile puts a file into the participant's store folder.
func (b *bundle) storeFile(user string, kind filestore.Kind, sub, name string, content []byte) {
	b.t.Helper()
	w, err := b.store.Create(b.ctx, filestore.Ref{User: user, Kind: kind, Subfolder: sub, Name: name})
	require.NoError(b.t, err)
	defer w.Abort()
	_, err = w.Write(content)
	require.NoError(b.t, err)
	_, err = w.Commit(b.ctx, "")
	require.NoError(b.t, err)
}

// wsConn is a test WebSocket client.
type wsConn struct {
	t *testing.T
	c *websocket.Conn
}

type wsMsg struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
	bin  []byte
}

func (m wsMsg) data(t *testing.T) map[string]any {
	t.Helper()
	var d map[string]any
	require.NoError(t, json.Unmarshal(m.Data, &d))
	return d
}

func (b *bundle) dial(user, query string, hdr ...string) *wsConn {
	b.t.Helper()
	c, resp, err := b.tryDial(user, query, hdr...)
	require.NoError(b.t, err, "dial: %v", resp)
	return &wsConn{t: b.t, c: c}
}

func (b *bundle) tryDial(user, query string, hdr ...string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{"Authorization": {basic(user)}}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	u := "ws" + strings.TrimPrefix(b.url, "http") + "/" + user + "/ws" + query
	c, resp, err := websocket.Dial(b.ctx, u, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		b.t.Cleanup(func() { _ = c.CloseNow() })
		c.SetReadLimit(1 << 20)
	}
	return c, resp, err
}

// read returns the next message (failing the test after
// testutil.WaitTimeout).
func (w *wsConn) read() wsMsg {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
	defer cancel()
	typ, data, err := w.c.Read(ctx)
	require.NoError(w.t, err)
	if typ == websocket.MessageBinary {
		return wsMsg{bin: data}
	}
	var m wsMsg
	require.NoError(w.t, json.Unmarshal(data, &m), "frame: %s", data)
	return m
}

// expect reads the next message and checks its type.
func (w *wsConn) expect(typ string) wsMsg {
	w.t.Helper()
	m := w.read()
	require.Equal(w.t, typ, m.Type, "data: %s", m.Data)
	return m
}

func (w *wsConn) send(v any) {
	w.t.Helper()
	data, err := json.Marshal(v)
	require.NoError(w.t, err)
	require.NoError(w.t, w.c.Write(context.Background(), websocket.MessageText, data))
}
