package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/metrics"
	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// What the broker holds in memory per queued job, at issue 4's size:
// 10,000 users with 10 queued jobs each (100,000 jobs). Every unfinished
// job's record stays in memory without its payload (prompt, extra_data,
// client id, outputs, inputs: they stay in JOBS until the job leaves the
// queue), plus its place in the scheduler and in the metrics.
//
//   - state: the broker's own structures, built by the code the intake
//     runs (record, lightened as a waiting job's is, scheduler item,
//     metrics observer), without NATS. api-prompt is the txt2img example
//     (1.5 KB); ui-prompt adds the 20 KB of UI workflow the ComfyUI
//     frontend sends in extra_data.extra_pnginfo. ui-prompt-kept is the
//     reference: the same jobs with their payload in memory, as the
//     broker held them before.
//   - process: the real broker with its embedded NATS (file storage, the
//     default limits), dispatch paused, 100,000 jobs published on SUBMIT
//     and taken in: the heap of the whole process, embedded server and
//     JetStream caches included.
//
// heap-MB is the live heap after a GC, less the heap before; KB/job divides
// it by the jobs.
func BenchmarkQueuedJobMemory(b *testing.B) {
	prompt, err := os.ReadFile("../../examples/workflows/txt2img.json")
	if err != nil {
		b.Fatal(err)
	}
	const users, perUser = 10_000, 10
	node := `{"id": 1, "type": "KSampler", "pos": [100, 200], "size": [315, 262], "widgets_values": [424242, "randomize", 20, 8, "euler", "normal", 1]}`
	n := 20_000 / (len(node) + 1)
	uiExtra := `{"extra_pnginfo": {"workflow": {"nodes": [` + strings.Repeat(node+",", n-1) + node + `]}}}`

	for _, v := range []struct {
		name  string
		extra string
		kept  bool
	}{{"state/api-prompt", "", false}, {"state/ui-prompt", uiExtra, false}, {"state/ui-prompt-kept", uiExtra, true}} {
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				before := liveHeap()
				st := newState(Config{Policy: "round-robin"})
				met, err := metrics.New(metrics.Config{})
				if err != nil {
					b.Fatal(err)
				}
				seq := uint64(0)
				for i := range perUser {
					for u := range users {
						seq++
						// Each record owns its bytes, as after decoding the
						// SUBMIT message.
						p := bytes.Replace(prompt, []byte(`"seed": 424242`), fmt.Appendf(nil, `"seed": %d`, seq), 1)
						rec := wire.JobRecord{
							ID: fmt.Sprintf("%08d-0000-4000-8000-%012d", i, u), User: fmt.Sprintf("user%05d", u), Pool: wire.DefaultPool,
							State: wire.StateQueued, Number: seq, SubmitSeq: seq, ClientID: "0123456789abcdef0123456789abcdef",
							Prompt: p, OutputsToExecute: []string{"9"}, CreatedAt: time.Now(),
						}
						if v.extra != "" {
							rec.ExtraData = append(json.RawMessage(nil), v.extra...)
						}
						e := &jobEntry{rec: rec, rev: seq}
						if !v.kept {
							e.lighten() // as the intake leaves a job that waits
						}
						st.jobs[rec.Key()] = e
						st.sched.Push(schedItem(rec))
						met.JobChanged("", rec)
					}
				}
				after := liveHeap()
				runtime.KeepAlive(st)
				runtime.KeepAlive(met)
				report(b, after-before, users*perUser)
			}
		})
	}

	b.Run("process/api-prompt", func(b *testing.B) {
		for b.Loop() {
			dir := b.TempDir()
			before := liveHeap()
			br, err := New(Config{DataDir: dir, NATSPort: -1, HTTPAddr: "127.0.0.1:0", Logger: zerolog.Nop()})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := br.Start(ctx); err != nil {
				b.Fatal(err)
			}
			if err := br.SetPaused(ctx, wire.Caller{Role: wire.RoleAdmin}, true); err != nil {
				b.Fatal(err)
			}
			nc, err := nats.Connect(br.ClientURL())
			if err != nil {
				b.Fatal(err)
			}
			js, _ := jetstream.New(nc)
			seq := 0
			for i := range perUser {
				var acks []jetstream.PubAckFuture
				for u := range users {
					seq++
					user := fmt.Sprintf("user%05d", u)
					id := fmt.Sprintf("%08d-0000-4000-8000-%012d", i, u)
					p := bytes.Replace(prompt, []byte(`"seed": 424242`), fmt.Appendf(nil, `"seed": %d`, seq), 1)
					data, _ := json.Marshal(wire.Job{ID: id, User: user, Pool: wire.DefaultPool, Prompt: p,
						OutputsToExecute: []string{"9"}, ClientID: "0123456789abcdef0123456789abcdef", SubmittedAt: time.Now()})
					f, err := js.PublishAsync(wire.SubmitSubject(user), data, jetstream.WithMsgID(id))
					if err != nil {
						b.Fatal(err)
					}
					acks = append(acks, f)
				}
				for _, f := range acks {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						b.Fatal(err)
					}
				}
			}
			nc.Close()
			for {
				st, err := br.Status(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if st.Queued[wire.DefaultPool] == users*perUser {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			after := liveHeap()
			report(b, after-before, users*perUser)
			_ = br.Stop(ctx)
		}
	})
}

func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func report(b *testing.B, bytes int64, jobs int) {
	b.ReportMetric(float64(bytes)/(1<<20), "heap-MB")
	b.ReportMetric(float64(bytes)/1024/float64(jobs), "KB/job")
}
