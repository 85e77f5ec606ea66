package e2e

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
)

// chromium returns the browser to drive, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium is not installed (apt-get install chromium): skipping the dashboard browser test")
	return ""
}

func browser(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1400, 1800),
	)
	alloc, cancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancel)
	bctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	require.NoError(t, chromedp.Run(bctx)) // start the browser now
	return bctx
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	var buf []byte
	require.NoError(t, chromedp.Run(ctx, chromedp.FullScreenshot(&buf, 100)))
	dir := filepath.Join(repoRoot(), "test", "e2e", "artifacts")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".png"), buf, 0o644))
}

// step runs actions with their own deadline, so a page that never shows
// what is awaited fails with a screenshot instead of hanging.
func step(t *testing.T, ctx context.Context, name string, d time.Duration, actions ...chromedp.Action) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Run(sctx, actions...); err != nil {
		shot, c2 := context.WithTimeout(ctx, testutil.WaitTimeout())
		var buf []byte
		var text string
		_ = chromedp.Run(shot, chromedp.FullScreenshot(&buf, 100), chromedp.Evaluate(`document.body.innerText`, &text))
		t.Logf("page text at failure:\n%s", text)
		c2()
		if len(buf) > 0 {
			dir := filepath.Join(repoRoot(), "test", "e2e", "artifacts")
			_ = os.MkdirAll(dir, 0o755)
			_ = os.WriteFile(filepath.Join(dir, "dashboard-failed-"+name+".png"), buf, 0o644)
		}
		t.Fatalf("%s: %v", name, err)
	}
}

// The instructor's day, in a real browser: log in, watch a job go from
// queued to running (with progress) to done (with its thumbnail), cancel
// a queued job with its button; a participant gets 403.
func TestDashboardInBrowser(t *testing.T) {
	t.Parallel()
	// 300 ms a model step: the watched job runs for about 8 s, time for
	// a browser on a loaded machine to show it running (it does so about
	// 0.6 s after the resume on a quiet one).
	s := startDashStack(t, 1, 300*time.Millisecond)
	const watchedJobRuns = 10 * time.Second
	base := s.broker.HTTPURL() + "/dashboard/"
	ctx := browser(t, s.ctx)

	login := func(user string) chromedp.Tasks {
		return chromedp.Tasks{
			chromedp.Navigate(base + "login"),
			chromedp.WaitVisible(`#user`, chromedp.ByQuery),
			chromedp.SendKeys(`#user`, user, chromedp.ByQuery),
			chromedp.SendKeys(`#password`, dashPassword, chromedp.ByQuery),
			chromedp.Click(`#login-submit`, chromedp.ByQuery),
		}
	}

	// A participant's login is refused with 403, in the browser and on
	// the wire.
	step(t, ctx, "participant", testutil.WaitTimeout(), login("user001"), chromedp.WaitVisible(`#forbidden`, chromedp.ByQuery))
	screenshot(t, ctx, "dashboard-participant-403")
	resp, err := http.PostForm(base+"login", url.Values{"user": {"user001"}, "password": {dashPassword}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "no login token, or a participant: 403 either way")

	step(t, ctx, "instructor", testutil.WaitTimeout(), login("teacher"),
		chromedp.WaitVisible(`#queue`, chromedp.ByQuery),
		chromedp.WaitVisible(`#conn.ok`, chromedp.ByQuery),
		chromedp.WaitVisible(`#agents .agent[data-agent="dash-box"]`, chromedp.ByQuery))

	// Pause the queue with its button, so two jobs wait where the
	// instructor can see (and cancel) them.
	step(t, ctx, "pause", testutil.WaitTimeout(),
		chromedp.WaitEnabled(`#pause`, chromedp.ByQuery),
		chromedp.Click(`#pause`, chromedp.ByQuery),
		chromedp.WaitVisible(`#queue-state.bad`, chromedp.ByQuery))
	watched := s.submit(t, "user001", "watched")
	doomed := s.submit(t, "user002", "doomed")

	step(t, ctx, "queued", testutil.WaitTimeout(),
		chromedp.WaitVisible(`#queue tr[data-job="`+watched+`"][data-state="queued"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#queue tr[data-job="`+doomed+`"][data-state="queued"]`, chromedp.ByQuery))
	screenshot(t, ctx, "dashboard-queued")

	step(t, ctx, "cancel", testutil.WaitTimeout(),
		chromedp.Click(`#queue button[data-action="cancel"][data-job="`+doomed+`"]`, chromedp.ByQuery),
		chromedp.WaitNotPresent(`#queue tr[data-job="`+doomed+`"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#recent tr[data-job="`+doomed+`"][data-state="cancelled"]`, chromedp.ByQuery))
	screenshot(t, ctx, "dashboard-cancelled")

	step(t, ctx, "resume", testutil.WaitTimeout(),
		chromedp.WaitEnabled(`#resume`, chromedp.ByQuery),
		chromedp.Click(`#resume`, chromedp.ByQuery),
		chromedp.WaitVisible(`#queue-state.ok`, chromedp.ByQuery))
	step(t, ctx, "running", testutil.WaitTimeout(),
		chromedp.WaitVisible(`#queue tr[data-job="`+watched+`"][data-state="running"] progress`, chromedp.ByQuery),
		chromedp.WaitVisible(`#agents tr[data-state="busy"] progress`, chromedp.ByQuery))
	screenshot(t, ctx, "dashboard-running")

	thumb := `#recent tr[data-job="` + watched + `"][data-state="succeeded"] img.thumb`
	var loaded bool
	step(t, ctx, "done", watchedJobRuns+testutil.WaitTimeout(),
		chromedp.WaitVisible(thumb, chromedp.ByQuery),
		chromedp.Poll(`(() => { const i = document.querySelector('`+thumb+`'); return i && i.complete && i.naturalWidth > 0; })()`, &loaded))
	require.True(t, loaded)
	screenshot(t, ctx, "dashboard-done")
}
