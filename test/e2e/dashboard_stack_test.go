package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/agent/runtime/simulated"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/brokerd"
	"github.com/atelier-run/atelier/pkg/dashboard"
	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/filestore/diskstore"
	"github.com/atelier-run/atelier/pkg/metrics"
	"github.com/atelier-run/atelier/pkg/proxy"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
	"golang.org/x/crypto/bcrypt"
)

// dashStack is the whole system in one process, the broker side started
// as atelier-broker starts it (brokerd: metrics observing the broker and
// counting the file store's traffic, the dashboard and /metrics mounted).
type dashStack struct {
	ctx      context.Context
	daemon   *brokerd.Daemon
	broker   *broker.Broker
	dash     *dashboard.Dashboard
	metrics  *metrics.Metrics
	proxyURL string
	layout   datalayout.Layout
}

const dashPassword = "pw-dashboard"

func startDashStack(t *testing.T, gpus int, stepDelay time.Duration) *dashStack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	layout := datalayout.New(filepath.Join(dir, "data"))
	log := zerolog.Nop()
	s := &dashStack{ctx: ctx, layout: layout}

	reg, err := registry.Open(registry.Config{Path: layout.RegistryPath(), BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	require.NoError(t, layout.Ensure())
	_, err = reg.Create(ctx, registry.User{ID: "teacher", Role: registry.RoleInstructor}, dashPassword)
	require.NoError(t, err)
	for _, u := range []string{"user001", "user002"} {
		_, err = reg.Create(ctx, registry.User{ID: u}, dashPassword)
		require.NoError(t, err)
		require.NoError(t, layout.EnsureInstance(u))
	}

	// The daemon as broker/main.go starts it; only the refresh intervals
	// are shortened for the test.
	s.daemon, err = brokerd.New(brokerd.Config{
		Broker: broker.Config{DataDir: layout.Root, NATSPort: -1, HTTPAddr: "127.0.0.1:0",
			Limits: wire.SmallLimits(), TickInterval: 200 * time.Millisecond, Logger: log},
		Metrics:   metrics.Config{FileStoreRefresh: time.Millisecond},
		Dashboard: dashboard.Config{PollInterval: 500 * time.Millisecond},
	})
	require.NoError(t, err)
	require.NoError(t, s.daemon.Start(ctx))
	t.Cleanup(func() { _ = s.daemon.Stop(context.Background()) })
	s.broker, s.dash, s.metrics = s.daemon.Broker, s.daemon.Dashboard, s.daemon.Metrics

	pc, err := nats.Connect(s.broker.ClientURL())
	require.NoError(t, err)
	t.Cleanup(pc.Close)
	px, err := proxy.New(proxy.Config{Addr: "127.0.0.1:0", Conn: pc, Registry: reg, Store: diskstore.New(layout), Logger: log})
	require.NoError(t, err)
	require.NoError(t, px.Start(ctx))
	t.Cleanup(func() { _ = px.Stop(context.Background()) })
	s.proxyURL = px.URL()

	ag, err := agent.New(agent.Config{ID: "dash-box", NATSURL: s.broker.ClientURL(),
		Runtime:           &simulated.Runtime{GPUs: gpus, Dir: filepath.Join(dir, "sim"), StepDelay: stepDelay, Logger: log},
		HeartbeatInterval: 200 * time.Millisecond, RetryDelay: 500 * time.Millisecond, Logger: log})
	require.NoError(t, err)
	require.NoError(t, ag.Start(ctx))
	t.Cleanup(func() { _ = ag.Stop(context.Background()) })
	testutil.Eventually(t, func() bool {
		st, err := s.broker.Status(ctx)
		return err == nil && len(st.Agents) > 0 && st.Catalogs > 0
	}, "agent never joined")
	return s
}

// submit queues a txt2img job (model nodes: progress steps) for user and
// returns its id; tag makes each prompt distinct so none is cached.
func (s *dashStack) submit(t *testing.T, user, tag string) string {
	t.Helper()
	wf, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "workflows", "txt2img.json"))
	require.NoError(t, err)
	wf = bytes.Replace(wf, []byte("a lighthouse"), []byte("a lighthouse "+tag), 1)
	req, _ := http.NewRequestWithContext(s.ctx, http.MethodPost, s.proxyURL+"/"+user+"/prompt",
		bytes.NewReader(fmt.Appendf(nil, `{"prompt": %s}`, wf)))
	req.SetBasicAuth(user, dashPassword)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	require.NoError(t, json.Unmarshal(body, &r))
	return r.PromptID
}
