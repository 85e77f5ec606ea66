package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

type testBundle struct {
	ctx    context.Context
	dash   *Dashboard
	srv    *httptest.Server
	res    *wire.Resources
	nc     *nats.Conn
	layout datalayout.Layout

	mu       sync.Mutex
	requests map[string][]json.RawMessage // op → requests the fake broker API got
}

// setup runs an embedded NATS with the wire contract, a registry with an
// instructor and a participant, a fake broker API (the real one is the
// broker's), and the dashboard on an httptest server.
func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	ns, err := natsembed.Start(ctx, natsembed.Config{StoreDir: filepath.Join(dir, "nats"), Port: -1, Logger: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	nc, err := ns.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	res, err := wire.Provision(ctx, js, wire.SmallLimits())
	require.NoError(t, err)

	layout := datalayout.New(filepath.Join(dir, "data"))
	require.NoError(t, layout.Ensure())
	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath(), BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	_, err = reg.Create(ctx, registry.User{ID: "teacher", Role: registry.RoleInstructor}, "pw")
	require.NoError(t, err)
	_, err = reg.Create(ctx, registry.User{ID: "user001"}, "pw")
	require.NoError(t, err)
	require.NoError(t, layout.EnsureInstance("user001"))

	tb := &testBundle{ctx: ctx, res: res, nc: nc, layout: layout, requests: map[string][]json.RawMessage{}}
	sub, err := nc.Subscribe("api.broker.*", func(m *nats.Msg) {
		op := strings.TrimPrefix(m.Subject, "api.broker.")
		tb.mu.Lock()
		tb.requests[op] = append(tb.requests[op], json.RawMessage(m.Data))
		tb.mu.Unlock()
		if op == wire.OpQueues {
			data, _ := json.Marshal(wire.QueuesReply{Policy: "round-robin"})
			_ = m.Respond(data)
			return
		}
		_ = m.Respond([]byte(`{"affected":["j1"]}`))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	d, err := New(Config{Registry: reg, Store: diskstore.New(layout), Conn: func() *nats.Conn { return nc },
		PollInterval: 50 * time.Millisecond, PushInterval: 10 * time.Millisecond, Logger: zerolog.Nop()})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { stop(t, d) })
	tb.dash = d
	tb.srv = httptest.NewServer(d)
	t.Cleanup(tb.srv.Close)
	return tb
}

// client returns an HTTP client with a cookie jar that does not follow
// redirects (the tests look at them).
func (tb *testBundle) client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfRE = regexp.MustCompile(`name="(?:csrf|atelier-csrf)" (?:value|content)="([^"]+)"`)

// login logs c in and returns the response and the page's CSRF token.
func (tb *testBundle) login(t *testing.T, c *http.Client, user, pw string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(tb.srv.URL + "/dashboard/login")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfRE.FindSubmatch(body)
	require.NotNil(t, m, string(body))
	resp, err = c.PostForm(tb.srv.URL+"/dashboard/login", url.Values{"user": {user}, "password": {pw}, "csrf": {string(m[1])}})
	require.NoError(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		return resp, ""
	}
	page, err := c.Get(tb.srv.URL + "/dashboard/")
	require.NoError(t, err)
	defer page.Body.Close()
	require.Equal(t, http.StatusOK, page.StatusCode)
	body, _ = io.ReadAll(page.Body)
	m = csrfRE.FindSubmatch(body)
	require.NotNil(t, m)
	return resp, string(m[1])
}

// awaitSnapshot waits, on the model's change signal, until cond holds.
func (tb *testBundle) awaitSnapshot(t *testing.T, cond func(Snapshot) bool) Snapshot {
	t.Helper()
	var s Snapshot
	awaitModel(t, tb.dash, func() bool { s = tb.dash.Snapshot(); return cond(s) }, func() string {
		b, _ := json.MarshalIndent(s, "", " ")
		return "snapshot never matched; last:\n" + string(b)
	})
	return s
}

// awaitModel waits, on d's model's change signal, until cond holds; then
// fails the test with what() after WaitTimeout.
func awaitModel(t *testing.T, d *Dashboard, cond func() bool, what func() string) {
	t.Helper()
	var v uint64
	deadline := time.After(testutil.WaitTimeout())
	for {
		var ch <-chan struct{}
		ch, v = d.model.wait(v)
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("after %s: %s", testutil.WaitTimeout(), what())
		}
	}
}

// stop stops d, failing the test if its watchers do not end.
func stop(t *testing.T, d *Dashboard) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
	defer cancel()
	require.NoError(t, d.Stop(ctx))
}

func (tb *testBundle) putJob(t *testing.T, r wire.JobRecord) {
	t.Helper()
	data, _ := json.Marshal(r)
	_, err := tb.res.Jobs.Put(tb.ctx, r.Key(), data)
	require.NoError(t, err)
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Prefix: "dash"})
	require.ErrorContains(t, err, "missing Registry")
	require.ErrorContains(t, err, "the Prefix must start and end")
}

func TestLoginRoles(t *testing.T) {
	t.Parallel()
	tb := setup(t)

	// Without a session the page sends you to the login form, the API
	// refuses.
	c := tb.client(t)
	resp, err := c.Get(tb.srv.URL + "/dashboard/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/dashboard/login", resp.Header.Get("Location"))
	resp, err = c.Get(tb.srv.URL + "/dashboard/api/snapshot")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	resp, _ = tb.login(t, tb.client(t), "user001", "pw")
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "a participant gets 403")
	resp, _ = tb.login(t, tb.client(t), "teacher", "wrong")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// A login form posted without its token (another site's form) fails.
	resp, err = tb.client(t).PostForm(tb.srv.URL+"/dashboard/login", url.Values{"user": {"teacher"}, "password": {"pw"}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)

	resp, token := tb.login(t, c, "teacher", "pw")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.NotEmpty(t, token)
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie {
			cookie = ck
		}
	}
	require.NotNil(t, cookie)
	require.True(t, cookie.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, cookie.SameSite)
	resp, err = c.Get(tb.srv.URL + "/dashboard/api/snapshot")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// The status command's basic auth: instructors only.
	req, _ := http.NewRequest("GET", tb.srv.URL+"/dashboard/api/snapshot", nil)
	req.SetBasicAuth("user001", "pw")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	req.SetBasicAuth("teacher", "pw")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestActionsNeedCSRFAndCarryTheInstructor(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	c := tb.client(t)
	_, token := tb.login(t, c, "teacher", "pw")

	post := func(op, token, body string) int {
		req, _ := http.NewRequest("POST", tb.srv.URL+"/dashboard/api/"+op, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set(csrfHeader, token)
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusForbidden, post("cancel", "", `{"user":"user001","job_ids":["j1"]}`))
	require.Equal(t, http.StatusForbidden, post("cancel", "forged", `{"user":"user001","job_ids":["j1"]}`))
	require.Equal(t, http.StatusBadRequest, post("cancel", token, `{"user":"../x","job_ids":["j1"]}`))
	require.Equal(t, http.StatusNotFound, post("reboot", token, `{}`))
	require.Equal(t, http.StatusOK, post("cancel", token, `{"user":"user001","job_ids":["j1"]}`))
	require.Equal(t, http.StatusOK, post("drain", token, `{"agent":"box1"}`))
	require.Equal(t, http.StatusOK, post("policy", token, `{"policy":"fifo"}`))
	require.Equal(t, http.StatusBadRequest, post("policy", token, `{"policy":"chaos"}`))

	tb.mu.Lock()
	defer tb.mu.Unlock()
	require.Len(t, tb.requests["cancel"], 1)
	var cr wire.CancelRequest
	require.NoError(t, json.Unmarshal(tb.requests["cancel"][0], &cr))
	require.Equal(t, wire.CancelRequest{Caller: wire.Caller{User: "teacher", Role: wire.RoleInstructor}, User: "user001", JobIDs: []string{"j1"}}, cr)
	var dr wire.DrainRequest
	require.NoError(t, json.Unmarshal(tb.requests["drain"][0], &dr))
	require.Equal(t, "box1", dr.Agent)
}

// The picture follows JOBS, AGENTS and the live progress events.
func TestSnapshotFollowsTheBuckets(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	now := time.Now().UTC()
	tb.putJob(t, wire.JobRecord{ID: "q1", User: "user001", Pool: "default", State: wire.StateQueued, Number: 3, CreatedAt: now.Add(-time.Minute)})
	tb.putJob(t, wire.JobRecord{ID: "q2", User: "user002", Pool: "default", State: wire.StateQueued, Number: 4, CreatedAt: now})
	tb.putJob(t, wire.JobRecord{ID: "r1", User: "user002", Pool: "default", State: wire.StateRunning, Number: 2, Attempt: 1,
		Agent: "box1", Slot: "gpu0", CreatedAt: now.Add(-time.Minute), StartedAt: now.Add(-10 * time.Second)})
	tb.putJob(t, wire.JobRecord{ID: "s1", User: "user001", Pool: "default", State: wire.StateSucceeded, Number: 1,
		CreatedAt: now.Add(-2 * time.Minute), StartedAt: now.Add(-110 * time.Second), FinishedAt: now.Add(-100 * time.Second),
		Outputs: map[string]json.RawMessage{"9": json.RawMessage(`{"images":[{"filename":"a.png","subfolder":"sim","type":"output"}]}`)}})
	tb.putJob(t, wire.JobRecord{ID: "f1", User: "user002", Pool: "default", State: wire.StateFailed, Number: 0,
		CreatedAt: now.Add(-2 * time.Minute), FinishedAt: now.Add(-time.Minute),
		Error: json.RawMessage(`{"exception_type":"RuntimeError","exception_message":"CUDA out of memory","node_id":"14","node_type":"KSampler"}`)})
	hb, _ := json.Marshal(wire.Heartbeat{Agent: "box1", Pool: "default", Slots: []wire.SlotStatus{
		{ID: "gpu0", State: wire.SlotBusy, JobID: "r1", User: "user002", VRAMTotal: 100, VRAMFree: 40},
		{ID: "gpu1", State: wire.SlotIdle}}})
	_, err := tb.res.Agents.Put(tb.ctx, "box1", hb)
	require.NoError(t, err)

	s := tb.awaitSnapshot(t, func(s Snapshot) bool { return len(s.Queue) == 3 && len(s.Recent) == 2 && len(s.Agents) == 1 && s.API })
	require.Equal(t, Totals{Queued: 2, Running: 1, Agents: 1, Slots: 2, BusySlots: 1, DoneLastHour: 1, FailedLastHour: 1}, s.Totals)
	require.Equal(t, []string{"r1", "q1", "q2"}, []string{s.Queue[0].ID, s.Queue[1].ID, s.Queue[2].ID})
	require.Equal(t, []UserDepth{{User: "user001", Queued: 1, Succeeded: 1}, {User: "user002", Queued: 1, Running: 1, Failed: 1}}, s.Users)
	require.Equal(t, "round-robin", s.Policy)
	require.Equal(t, []OutputRef{{Filename: "a.png", Subfolder: "sim", Type: "output", Image: true}}, s.Recent[1].Outputs)
	require.Len(t, s.Failed, 1)
	require.Equal(t, "RuntimeError: CUDA out of memory (node 14 KSampler)", s.Failed[0].Error)
	require.InDelta(t, 10, s.Recent[1].RunS, 0.01)

	// Progress of the running job's current attempt shows on the job and
	// its slot; an event from another agent is ignored.
	ev, _ := json.Marshal(wire.Event{JobID: "r1", Attempt: 1, Type: "progress", Data: json.RawMessage(`{"value":7,"max":20,"node":"14"}`)})
	require.NoError(t, tb.nc.Publish("evt.box9.user002.r1", ev))
	require.NoError(t, tb.nc.Publish("evt.box1.user002.r1", ev))
	s = tb.awaitSnapshot(t, func(s Snapshot) bool { return s.Queue[0].Progress != nil })
	require.Equal(t, &Progress{Value: 7, Max: 20, Node: "14"}, s.Queue[0].Progress)
	require.Equal(t, &Progress{Value: 7, Max: 20, Node: "14"}, s.Agents[0].Slots[0].Progress)

	// The job ends: it leaves the queue, progress is gone, depth drops.
	tb.putJob(t, wire.JobRecord{ID: "r1", User: "user002", Pool: "default", State: wire.StateSucceeded, Number: 2, Attempt: 1,
		CreatedAt: now.Add(-time.Minute), StartedAt: now.Add(-10 * time.Second), FinishedAt: now})
	s = tb.awaitSnapshot(t, func(s Snapshot) bool { return len(s.Queue) == 2 })
	require.Equal(t, 2, s.Totals.DoneLastHour)
	last := s.Depth[len(s.Depth)-1]
	require.Equal(t, DepthPoint{T: last.T, Waiting: 2, Running: 0}, last)

	var buf bytes.Buffer
	require.NoError(t, WriteText(&buf, s))
	out := buf.String()
	require.Contains(t, out, "waiting 2 (queued 2, dispatched 0)  running 0  GPUs busy 1/2  agents 1  last hour: 2 done, 1 failed")
	require.Regexp(t, `box1\s+gpu0\s+-\s+busy\s+r1\s+user002\s+-\s+60B/100B\s+0%`, out)
	require.Regexp(t, `user002\s+1\s+0\s+1\s+1`, out)
	require.Contains(t, out, "RuntimeError: CUDA out of memory (node 14 KSampler)")
}

func TestThumbnailsAreInstructorOnly(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	dir := filepath.Join(tb.layout.OutputDir("user001"), "sim")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, image.NewRGBA(image.Rect(0, 0, 640, 320))))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.png"), buf.Bytes(), 0o644))

	path := "/dashboard/thumb?user=user001&type=output&subfolder=sim&filename=a.png"
	resp, err := http.Get(tb.srv.URL + path)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	c := tb.client(t)
	tb.login(t, c, "teacher", "pw")
	resp, err = c.Get(tb.srv.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	img, err := png.Decode(resp.Body)
	require.NoError(t, err)
	require.Equal(t, image.Pt(160, 80), img.Bounds().Size())

	resp, err = c.Get(tb.srv.URL + "/dashboard/file?user=user001&type=output&subfolder=../../meta&filename=instance-registry.json")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}
