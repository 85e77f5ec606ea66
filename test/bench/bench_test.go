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
	s := slices.Clone(l)
	slices.Sort(s)
	pct := func(p float64) float64 {
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
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
// simulator receives the prompt, through the broker and an agent: the
// latency the queue adds before a GPU starts.
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
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkRawJetStreamRoundTrip is the floor: publish → fetch → ack of one
// message on a work-queue stream of the same kind of embedded server.
func BenchmarkRawJetStreamRoundTrip(b *testing.B) {
	s := startStack(b, make(chan struct{}, 1))
	nc, err := nats.Connect(s.Broker.ClientURL())
	require.NoError(b, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(b, err)
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH", Subjects: []string{"bench.>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.MemoryStorage,
	})
	require.NoError(b, err)
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(b, err)
	payload := bytes.Repeat([]byte("x"), 512)
	var lat latencies
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		_, err := js.Publish(ctx, "bench.job", payload)
		require.NoError(b, err)
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		require.NoError(b, err)
		for m := range batch.Messages() {
			require.NoError(b, m.Ack())
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	lat.report(b)
}
