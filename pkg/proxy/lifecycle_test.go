package proxy

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/wire"
)

// evicts reports whether a janitor pass evicted user's view.
func (jp janitorPass) evicts(user string) bool { return slices.Contains(jp.evicted, user) }

func TestViewEviction(t *testing.T) {
	t.Parallel()
	const idle = 200 * time.Millisecond // a config value: the janitor ticks every idle/4
	b := setup(t, withConfig(func(c *Config) { c.ViewIdleTimeout = idle }),
		withSignals(func(s *testSignals) { s.janitorPassed.Init() }))
	views := func() int {
		b.proxy.views.mu.Lock()
		defer b.proxy.views.mu.Unlock()
		return len(b.proxy.views.views)
	}
	require.Equal(t, http.StatusOK, b.do(http.MethodGet, "/user001/queue", alice, "").status)
	b.signals.janitorPassed.WaitFor(t, "alice's idle view evicted", func(jp janitorPass) bool { return jp.evicts(alice) })
	require.Zero(t, views())

	// A view with a socket stays; a new request after eviction rebuilds it.
	b.putRecord(record(alice, 1, wire.StateQueued))
	ws := b.dial(alice, "?clientId=x")
	require.JSONEq(t, `{"status": {"exec_info": {"queue_remaining": 1}}, "sid": "x"}`, string(ws.expect("status").Data))
	require.JSONEq(t, `{"exec_info": {"queue_remaining": 1}}`, string(b.do(http.MethodGet, "/user001/prompt", alice, "").body))
	// Without its socket the view would be idle for longer than idle at
	// the first pass after this deadline, which proves it stays.
	deadline := time.Now().Add(idle)
	b.signals.janitorPassed.WaitFor(t, "a janitor pass after the view would be idle", func(jp janitorPass) bool {
		require.False(t, jp.evicts(alice), "the view with a socket was evicted")
		return jp.at.After(deadline)
	})
	require.Equal(t, 1, views())
}

// A view still loading its initial state is in use by the requests that
// wait for it: the janitor evicts an idle view as old as it, not this one.
// (A load can take longer than ViewIdleTimeout on a loaded machine; the
// janitor cancelled it, and the requests waiting for it got 503.)
func TestLoadingViewIsNotEvicted(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *Config) { c.ViewIdleTimeout = 200 * time.Millisecond }),
		withSignals(func(s *testSignals) {
			s.janitorPassed.Init()
			s.viewAwaited.Init()
		}))
	r := b.proxy.views
	registered := func(v *userView) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.views[v.user] == v
	}
	setLastUsed := func(v *userView, at time.Time) {
		v.mu.Lock()
		v.lastUsed = at
		v.mu.Unlock()
	}
	// Alice's view never loads by itself (its loop does not run): the
	// test says when it is loaded. Not idle until a request waits for it.
	loading := newUserView(b.proxy, alice)
	setLastUsed(loading, time.Now().Add(time.Hour))
	r.mu.Lock()
	r.views[alice] = loading
	r.mu.Unlock()
	type result struct {
		v   *userView
		err error
	}
	got := make(chan result, 1)
	go func() {
		v, err := r.get(b.ctx, alice)
		got <- result{v, err}
	}()
	require.Equal(t, alice, b.signals.viewAwaited.WaitOrTimeout(t))

	// Both views were last used an hour ago; Bob's is loaded, and nobody
	// waits for it. The janitor's pass that evicts Bob's looks at Alice's
	// too.
	setLastUsed(loading, time.Now().Add(-time.Hour))
	idle := newUserView(b.proxy, bob)
	close(idle.ready)
	setLastUsed(idle, time.Now().Add(-time.Hour))
	r.mu.Lock()
	r.views[bob] = idle
	r.mu.Unlock()
	pass := b.signals.janitorPassed.WaitFor(t, "bob's idle view evicted", func(jp janitorPass) bool { return jp.evicts(bob) })
	require.False(t, pass.evicts(alice), "the view was evicted while a request waited for it")
	require.True(t, registered(loading))
	require.NoError(t, loading.ctx.Err())

	// Loaded: the request has it, and it is evicted once idle.
	close(loading.ready)
	res := testutil.WaitOrTimeout(t, got)
	require.NoError(t, res.err)
	require.Same(t, loading, res.v)
	b.signals.janitorPassed.WaitFor(t, "alice's view evicted once idle", func(jp janitorPass) bool { return jp.evicts(alice) })
	require.False(t, registered(loading))
}

func TestStopClosesSockets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ws := b.dial(alice, "?clientId=x")
	ws.expect("status")

	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
	defer cancel()
	require.NoError(t, b.proxy.Stop(ctx))
	_, _, err := ws.c.Read(ctx)
	require.Error(t, err)
	require.NotEqual(t, context.DeadlineExceeded, ctx.Err())
	// Stop is idempotent; Start after Stop is refused.
	require.NoError(t, b.proxy.Stop(ctx))
	require.ErrorIs(t, b.proxy.Start(ctx), ErrAlreadyStarted)
}

// A socket whose queue is full is dropped rather than blocking the loop.
func TestSlowSocketDropped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	v, err := b.proxy.views.get(context.Background(), alice)
	require.NoError(t, err)
	require.True(t, v.reserveSocket(10))
	s := &socket{sid: "slow", out: make(chan frame, 1), gone: make(chan struct{}), jobs: map[string]*sentState{}}
	require.True(t, v.addSocket(s)) // queues the first status: the queue is full now
	v.mu.Lock()
	v.sendLocked(s, statusFrame(1, ""))
	_, still := v.sockets[s]
	v.mu.Unlock()
	require.False(t, still)
	select {
	case <-s.gone:
	default:
		t.Fatal("slow socket not dropped")
	}
	require.Equal(t, websocket.StatusPolicyViolation, s.goneCode)
}

func TestAdaptBinary(t *testing.T) {
	t.Parallel()
	plain := []byte{0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xd8}
	require.Equal(t, plain, adaptBinary(plain, false))
	meta := []byte(`{"image_type": "image/jpeg"}`)
	withMeta := append([]byte{0, 0, 0, 4, 0, 0, 0, byte(len(meta))}, meta...)
	withMeta = append(withMeta, 0xff, 0xd8)
	require.Equal(t, withMeta, adaptBinary(withMeta, true))
	require.Equal(t, plain, adaptBinary(withMeta, false))
	require.Nil(t, adaptBinary([]byte{0, 0, 0, 4, 0, 0, 1, 0}, false)) // length past the end
	require.Nil(t, adaptBinary([]byte{0, 0}, false))
}

func TestCheckJSONDepth(t *testing.T) {
	t.Parallel()
	require.NoError(t, checkJSONDepth([]byte(`{"a": [[["x"]]], "s": "[[[[[[[["}`), 4))
	require.Error(t, checkJSONDepth([]byte(`{"a": [[[["x"]]]]}`), 4))
	require.NoError(t, checkJSONDepth([]byte(`{"s": "\"[[[[[["}`), 1))
}

func TestCompareNodeIDs(t *testing.T) {
	t.Parallel()
	ids := []string{"10", "b", "9", "a", "100", "2"}
	slicesSort(ids)
	require.Equal(t, []string{"2", "9", "10", "100", "a", "b"}, ids)
}

func slicesSort(ids []string) {
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && compareNodeIDs(ids[j-1], ids[j]) > 0; j-- {
			ids[j-1], ids[j] = ids[j], ids[j-1]
		}
	}
}
