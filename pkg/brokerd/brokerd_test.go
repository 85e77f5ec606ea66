package brokerd

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/atelier-run/atelier/internal/testport"
	"github.com/atelier-run/atelier/internal/testutil"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/natsembed"
	"github.com/atelier-run/atelier/pkg/wire"
)

// A stopped daemon leaves no goroutine behind: the broker, its embedded
// NATS, the dashboard's watchers and the HTTP server all end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testConfig(t *testing.T) Config {
	return Config{Broker: broker.Config{DataDir: t.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Limits: wire.SmallLimits(), Logger: zerolog.Nop()}}
}

// get answers a GET on the daemon's HTTP server with its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// The daemon is the broker with /metrics and the dashboard on its HTTP
// server, its file store the disk store under the data directory.
func TestDaemonMountsMetricsAndDashboard(t *testing.T) {
	d, err := New(testConfig(t))
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
		defer cancel()
		require.NoError(t, d.Stop(ctx))
	}()
	base := d.Broker.HTTPURL()
	testutil.Eventually(t, func() bool { code, _ := get(t, base+"/healthz"); return code == http.StatusOK }, "the broker never got healthy")
	code, body := get(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "atelier_")
	code, _ = get(t, base+"/dashboard/login")
	require.Equal(t, http.StatusOK, code)
	require.NotNil(t, d.Broker.Store())
}

// Run serves until its context ends, then stops and returns.
func TestRunStopsWhenTheContextEnds(t *testing.T) {
	cfg := testConfig(t)
	cfg.Broker.HTTPAddr = testport.Addr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	testutil.Eventually(t, func() bool {
		resp, err := http.Get("http://" + cfg.Broker.HTTPAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "Run never served")
	cancel()
	require.NoError(t, testutil.WaitOrTimeout(t, done))
}

// A file store the configuration cannot make stops New before anything
// starts.
func TestNewRefusesABadStore(t *testing.T) {
	cfg := testConfig(t)
	cfg.Store.Kind = "tape"
	_, err := New(cfg)
	require.ErrorContains(t, err, "file store")
}

// Clients look for the broker's NATS where the embedded server listens
// by default.
func TestDefaultNATSURLIsTheEmbeddedListener(t *testing.T) {
	require.Equal(t, wire.DefaultNATSURL, "nats://"+net.JoinHostPort(natsembed.DefaultHost, strconv.Itoa(natsembed.DefaultPort)))
}
