// Package bench holds Atelier's benchmarks. Each reports its figures with
// b.ReportMetric beside a reference measured in the same run, so the ratio
// means something on any machine; benchstat compares runs.
package bench

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/stack"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// latencies collects durations and reports percentiles.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	b.ReportMetric(l.pct(0.50), "p50-ms")
	b.ReportMetric(l.pct(0.99), "p99-ms")
}

// pct is the p-th percentile in milliseconds.
func (l latencies) pct(p float64) float64 {
	s := slices.Clone(l)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
}

func startStack(b *testing.B, reached chan<- struct{}) *stack.Stack {
	b.Helper()
	dir := b.TempDir()
	s, err := stack.Start(context.Background(), stack.Config{
		Dir: dir, Users: []string{"user001"}, Password: "bench", GPUs: 2,
		ConfigureSim: func(_ int, cfg *comfysim.Config) {
			cfg.OnPrompt = func(string) {
				select {
				case reached <- struct{}{}:
				default:
				}
			}
		},
		Logger: zerolog.Nop(),
	})
	require.NoError(b, err)
	b.Cleanup(func() { s.Stop(context.Background()) })
	return s
}

func repoFile(b *testing.B, rel string) []byte {
	b.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", rel))
	require.NoError(b, err)
	return data
}

// BenchmarkSubmitToComfy measures HTTP POST /prompt at the proxy until the
// simulator receives the prompt, through the broker and an agent, with a
// free GPU waiting: the latency the queue itself adds before a GPU starts.
func BenchmarkSubmitToComfy(b *testing.B) {
	reached := make(chan struct{}, 1)
	s := startStack(b, reached)
	wf := repoFile(b, "examples/workflows/noweights.json")
	url := s.ProxyURL() + "/user001/prompt"
	var lat latencies
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// Vary the prompt so each one really runs.
		body := fmt.Appendf(nil, `{"prompt": %s}`, bytes.Replace(wf, []byte(`"sigma": 1.5`), fmt.Appendf(nil, `"sigma": 1.%d`, i%1000+1), 1))
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.SetBasicAuth("user001", "bench")
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		require.NoError(b, err)
		resp.Body.Close()
		require.Equal(b, http.StatusOK, resp.StatusCode)
		select {
		case <-reached:
		case <-time.After(30 * time.Second):
			b.Fatal("prompt never reached ComfyUI")
		}
		lat = append(lat, time.Since(start))
		// Measure the path, not queueing behind a busy GPU: let the job
		// finish before the next one.
		b.StopTimer()
		awaitIdle(b, s)
		b.StartTimer()
	}
	b.StopTimer()
	lat.report(b)

	// The reference, on the same server in the same run.
	rt := newRawRoundTrip(b, s)
	var raw latencies
	for range 200 {
		raw = append(raw, rt.once(b))
	}
	b.ReportMetric(lat.pct(0.50)/raw.pct(0.50), "x-raw-p50")
}

// awaitIdle waits until the broker has no unfinished job.
func awaitIdle(b *testing.B, s *stack.Stack) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := s.Broker.Status(context.Background())
		require.NoError(b, err)
		if len(st.Users) == 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatal("jobs did not finish")
}

// BenchmarkRawJetStreamRoundTrip is the floor: publish → fetch → ack of one
// 512-byte message on a work-queue stream of the same embedded server.
func BenchmarkRawJetStreamRoundTrip(b *testing.B) {
	s := startStack(b, make(chan struct{}, 1))
	rt := newRawRoundTrip(b, s)
	var lat latencies
	b.ResetTimer()
	for b.Loop() {
		lat = append(lat, rt.once(b))
	}
	b.StopTimer()
	lat.report(b)
}

// rawRoundTrip is one JetStream job round trip, the reference figure.
type rawRoundTrip struct {
	ctx     context.Context
	js      jetstream.JetStream
	cons    jetstream.Consumer
	payload []byte
}

func newRawRoundTrip(b *testing.B, s *stack.Stack) *rawRoundTrip {
	b.Helper()
	nc, err := nats.Connect(s.Broker.ClientURL())
	require.NoError(b, err)
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(b, err)
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH", Subjects: []string{"bench.>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.MemoryStorage,
	})
	require.NoError(b, err)
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(b, err)
	return &rawRoundTrip{ctx: ctx, js: js, cons: cons, payload: bytes.Repeat([]byte("x"), 512)}
}

func (r *rawRoundTrip) once(b *testing.B) time.Duration {
	start := time.Now()
	_, err := r.js.Publish(r.ctx, "bench.job", r.payload)
	require.NoError(b, err)
	batch, err := r.cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(b, err)
	for m := range batch.Messages() {
		require.NoError(b, m.Ack())
	}
	return time.Since(start)
}
