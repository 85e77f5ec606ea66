package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// What reading a queued job's payload back from JOBS costs when the job
// leaves the queue. 1,000 jobs with the UI workflow in extra_data (22 KB
// each) wait while dispatch is paused; an agent with 1,000 slots is there;
// resuming releases all of them on the core (publish the ticket, write
// the dispatched record). us/job is that resume divided by the jobs.
//
//   - read-back: as the broker runs, each job's payload is read from JOBS
//     before its dispatched record is written.
//   - in-memory: the reference, the broker before payloads left memory:
//     every payload is loaded before the resume, so dispatch reads
//     nothing.
func BenchmarkDispatchQueuedJobs(b *testing.B) {
	const users, perUser = 10, 100
	node := `{"id": 1, "type": "KSampler", "pos": [100, 200], "size": [315, 262], "widgets_values": [424242, "randomize", 20, 8, "euler", "normal", 1]}`
	n := 20_000 / (len(node) + 1)
	uiExtra := json.RawMessage(`{"extra_pnginfo": {"workflow": {"nodes": [` + strings.Repeat(node+",", n-1) + node + `]}}}`)
	prompt := json.RawMessage(`{"1":{"class_type":"EmptyImage","inputs":{}}}`)

	for _, preload := range []bool{false, true} {
		name := "read-back"
		if preload {
			name = "in-memory"
		}
		b.Run(name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				br := startPausedBroker(b)
				ctx := context.Background()
				nc, err := nats.Connect(br.ClientURL())
				if err != nil {
					b.Fatal(err)
				}
				js, _ := jetstream.New(nc)
				for i := range users * perUser {
					user := fmt.Sprintf("user%03d", i%users)
					job := wire.Job{ID: fmt.Sprintf("job%05d", i), User: user, Pool: wire.DefaultPool, Prompt: prompt,
						ExtraData: uiExtra, OutputsToExecute: []string{"1"}, SubmittedAt: time.Now()}
					data, _ := json.Marshal(job)
					if _, err := js.Publish(ctx, wire.SubmitSubject(user), data, jetstream.WithMsgID(job.ID)); err != nil {
						b.Fatal(err)
					}
				}
				hb := wire.Heartbeat{Agent: "a1", Pool: wire.DefaultPool, Boot: "boot1", At: time.Now()}
				for range users * perUser {
					hb.Slots = append(hb.Slots, wire.SlotStatus{ID: "gpu", State: wire.SlotIdle})
				}
				data, _ := json.Marshal(hb)
				if err := nc.Publish(wire.HeartbeatSubject("a1"), data); err != nil {
					b.Fatal(err)
				}
				awaitStatus(b, br, func(st Status) bool {
					return st.Queued[wire.DefaultPool] == users*perUser && len(st.Agents) == 1
				})
				if preload {
					if err := br.do(ctx, func() {
						for _, e := range br.state.jobs {
							if err := br.loadPayload(ctx, e); err != nil {
								b.Error(err)
							}
						}
					}); err != nil {
						b.Fatal(err)
					}
				}

				b.StartTimer()
				start := time.Now()
				if err := br.SetPaused(ctx, wire.Caller{Role: wire.RoleAdmin}, false); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				b.StopTimer()
				awaitStatus(b, br, func(st Status) bool { return st.InFlight[wire.DefaultPool] == users*perUser })
				nc.Close()
				_ = br.Stop(ctx)
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N*users*perUser), "us/job")
		})
	}
}

func startPausedBroker(b *testing.B) *Broker {
	b.Helper()
	br, err := New(Config{DataDir: b.TempDir(), NATSPort: -1, HTTPAddr: "127.0.0.1:0", Logger: zerolog.Nop()})
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
	return br
}

func awaitStatus(b *testing.B, br *Broker, done func(Status) bool) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := br.Status(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if done(st) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("broker status never got there: queued %v, in flight %v, %d agents", st.Queued, st.InFlight, len(st.Agents))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
