package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/agent"
	"github.com/atelier-run/atelier/pkg/agent/runtime/simulated"
	"github.com/atelier-run/atelier/pkg/broker"
	"github.com/atelier-run/atelier/pkg/comfysim"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// BenchmarkIdleGap measures how long a GPU waits between jobs while jobs
// are queued: 400 jobs of ~100 ms on 4 slots through the real agent,
// broker, NATS and simulator. The simulator's hooks time each prompt from
// the moment its worker takes it (OnExecute) to the moment it is done
// (OnDone); the gap is the end of one job to the start of the next on the
// same slot. "prefetch" is the agent's default (the next job claimed and
// staged while the current runs); "no-prefetch" fetches only when idle.
//
// b.N is not a job count: the experiment (400 jobs) is the measurement
// and runs exactly once per sub-benchmark, whatever -benchtime says.
// `make bench` passes -benchtime 200x for the other benchmarks; the
// testing package then calls this function twice (b.N = 1, then b.N =
// 200), so the result of the first call is kept and reported again
// instead of running the experiment 1 + 200 times.
//
// Goal: gap p99 < 20 ms and busy > 99 % with prefetch. The agent queues
// the prefetched prompt in ComfyUI's own queue while the current one
// runs, so ComfyUI starts it the instant the current one ends.
func BenchmarkIdleGap(b *testing.B) {
	for _, tc := range []struct {
		name     string
		prefetch bool
	}{{"prefetch", true}, {"no-prefetch", false}} {
		var (
			ran  bool
			gaps latencies
			busy float64
		)
		b.Run(tc.name, func(b *testing.B) {
			if !ran {
				gaps, busy = idleGapRun(b, tc.prefetch, 4, 400)
				ran = true
			}
			b.ReportMetric(gaps.pct(0.50), "gap-p50-ms")
			b.ReportMetric(gaps.pct(0.99), "gap-p99-ms")
			b.ReportMetric(busy*100, "busy-pct")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// span is one prompt's execution on a simulated GPU.
type span struct{ start, end time.Time }

type finalCounter struct {
	mu   sync.Mutex
	n    int
	want int
	done chan struct{}
}

func (f *finalCounter) JobChanged(prev wire.JobState, rec wire.JobRecord) {
	if !rec.State.Final() || prev.Final() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n++; f.n == f.want {
		close(f.done)
	}
}
func (f *finalCounter) AgentSeen(wire.Heartbeat) {}
func (f *finalCounter) AgentLost(string)         {}

func idleGapRun(b *testing.B, prefetch bool, gpus, jobs int) (latencies, float64) {
	b.Helper()
	b.StopTimer()
	dir := b.TempDir()
	lim := wire.SmallLimits()
	lim.MaxBacklogPerUser = int64(jobs)
	fc := &finalCounter{want: jobs, done: make(chan struct{})}
	br, err := broker.New(broker.Config{
		DataDir: filepath.Join(dir, "data"), NATSPort: -1, HTTPAddr: "127.0.0.1:0",
		Limits: lim, TickInterval: 200 * time.Millisecond, Observer: fc, Logger: zerolog.Nop(),
	})
	require.NoError(b, err)
	ctx := context.Background()
	require.NoError(b, br.Start(ctx))
	defer br.Stop(ctx)

	var mu sync.Mutex
	open := make([]map[string]time.Time, gpus)
	spans := make([][]span, gpus)
	for i := range open {
		open[i] = map[string]time.Time{}
	}
	rt := &simulated.Runtime{
		GPUs: gpus, Dir: filepath.Join(dir, "sim"), StepDelay: 5 * time.Millisecond, Logger: zerolog.Nop(),
		Configure: func(i int, cfg *comfysim.Config) {
			cfg.OnExecute = func(id string) {
				mu.Lock()
				open[i][id] = time.Now()
				mu.Unlock()
			}
			cfg.OnDone = func(id string, _ bool) {
				now := time.Now()
				mu.Lock()
				spans[i] = append(spans[i], span{open[i][id], now})
				mu.Unlock()
			}
		},
	}
	ag, err := agent.New(agent.Config{
		ID: "bench-agent", NATSURL: br.ClientURL(), Runtime: rt, DisablePrefetch: !prefetch,
		HeartbeatInterval: 200 * time.Millisecond, RetryDelay: 500 * time.Millisecond, Logger: benchLogger(),
	})
	require.NoError(b, err)
	require.NoError(b, ag.Start(ctx))
	defer ag.Stop(ctx)
	require.Eventually(b, func() bool {
		st, err := br.Status(ctx)
		return err == nil && len(st.Agents) > 0 && st.Catalogs > 0
	}, 20*time.Second, 10*time.Millisecond)

	nc, err := nats.Connect(br.ClientURL())
	require.NoError(b, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(b, err)
	// ~100 ms per job: a cached checkpoint and prompts, 19 sampler steps
	// and the VAE decode at 5 ms each.
	for i := range jobs {
		id := uuid.NewString()
		prompt := fmt.Sprintf(`{
 "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": %q}},
 "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "a lighthouse"}},
 "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "blurry"}},
 "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
 "14": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "latent_image": ["13", 0],
        "seed": %d, "steps": 19, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
 "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
 "16": {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}}
}`, comfysim.DefaultCheckpoint, i)
		user := fmt.Sprintf("user%03d", i%4+1)
		data, _ := json.Marshal(wire.Job{ID: id, User: user, Pool: wire.DefaultPool, Prompt: json.RawMessage(prompt),
			OutputsToExecute: []string{"16"}, SubmittedAt: time.Now().UTC()})
		_, err := js.Publish(ctx, wire.SubmitSubject(user), data, jetstream.WithMsgID(id))
		require.NoError(b, err)
	}
	b.StartTimer()
	select {
	case <-fc.done:
	case <-time.After(110 * time.Second):
		b.Fatalf("only %d of %d jobs finished", fc.n, jobs)
	}
	b.StopTimer()

	mu.Lock()
	defer mu.Unlock()
	var gaps latencies
	var first, last time.Time
	var busy time.Duration
	for _, ss := range spans {
		slices.SortFunc(ss, func(x, y span) int { return x.start.Compare(y.start) })
		for i, s := range ss {
			busy += s.end.Sub(s.start)
			if first.IsZero() || s.start.Before(first) {
				first = s.start
			}
			if s.end.After(last) {
				last = s.end
			}
			if i > 0 {
				gaps = append(gaps, max(0, s.start.Sub(ss[i-1].end)))
			}
		}
	}
	// Busy fraction of the slots from the first start to the last end
	// (the tail where fewer than 4 jobs are left counts against it).
	frac := float64(busy) / (float64(gpus) * float64(last.Sub(first)))
	return gaps, frac
}

func benchLogger() zerolog.Logger {
	if p := os.Getenv("ATELIER_BENCH_LOG"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			return zerolog.New(f).Level(zerolog.DebugLevel).With().Timestamp().Logger()
		}
	}
	return zerolog.Nop()
}
