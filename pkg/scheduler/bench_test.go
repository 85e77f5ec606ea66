package scheduler_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/scheduler"
)

// workshopArrivals is issue 4's scenario: 4 slots, 1 s jobs, user A
// queues 100 jobs at t=0, 19 other users queue one job each at t=1 s.
func workshopArrivals() []scheduler.Arrival {
	var a []scheduler.Arrival
	for i := range 100 {
		a = append(a, scheduler.Arrival{At: 0, Duration: time.Second,
			Item: scheduler.Item{JobID: fmt.Sprintf("A-%d", i), User: "A", Pool: "p", Seq: uint64(i + 1)}})
	}
	for u := range 19 {
		a = append(a, scheduler.Arrival{At: time.Second, Duration: time.Second,
			Item: scheduler.Item{JobID: fmt.Sprintf("U%d", u), User: fmt.Sprintf("u%02d", u), Pool: "p", Seq: uint64(200 + u)}})
	}
	return a
}

// BenchmarkFairness runs the workshop scenario in simulated time through
// the real policy code. max-wait-jobs is the longest wait of the 19 late
// users in job durations (goal under round-robin: at most ceil(20/4)+1 =
// 6); jain is Jain's index of the GPU time the 20 active users got between
// t=1 s and the moment the last of the 19 finished (1 = equal shares).
func BenchmarkFairness(b *testing.B) {
	for _, p := range []scheduler.Policy{scheduler.FIFO, scheduler.RoundRobin} {
		b.Run(string(p), func(b *testing.B) {
			var jobs []scheduler.SimJob
			for b.Loop() {
				jobs = scheduler.Simulate(scheduler.SimConfig{Slots: 4, Policy: p, Arrivals: workshopArrivals()})
			}
			var worst, end time.Duration
			for _, j := range jobs {
				if j.Item.User != "A" {
					worst = max(worst, j.Wait())
					end = max(end, j.Ended)
				}
			}
			start := time.Second
			gpu := map[string]float64{}
			for _, j := range jobs {
				lo, hi := max(j.Started, start), min(j.Ended, end)
				if hi > lo {
					gpu[j.Item.User] += (hi - lo).Seconds()
				}
			}
			var shares []float64
			for _, s := range gpu {
				shares = append(shares, s)
			}
			b.ReportMetric(worst.Seconds(), "max-wait-jobs")
			b.ReportMetric(scheduler.Jain(shares), "jain")
		})
	}
}

// BenchmarkDispatchDecision measures one dispatch decision (a slot frees,
// the next job is chosen) with 10,000 users, 100,000 queued jobs and 1,000
// slots busy, and the scheduler's heap at that size.
func BenchmarkDispatchDecision(b *testing.B) {
	for _, p := range []scheduler.Policy{scheduler.RoundRobin, scheduler.FIFO, scheduler.Priority} {
		b.Run(string(p), func(b *testing.B) {
			const users, perUser, slots = 10_000, 10, 1_000
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			s := scheduler.New(scheduler.Config{Policy: p})
			seq := uint64(0)
			push := func(u int) {
				seq++
				it := scheduler.Item{JobID: fmt.Sprintf("j%d", seq), User: fmt.Sprintf("user%05d", u), Pool: "p", Seq: seq}
				if p == scheduler.Priority && seq%100 == 0 {
					it.Bump = seq
				}
				s.Push(it)
			}
			for range perUser {
				for u := range users {
					push(u)
				}
			}
			running := make([]scheduler.Item, 0, slots)
			for range slots {
				it, _ := s.Next("p")
				running = append(running, it)
			}
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			heapMB := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)

			b.ResetTimer()
			n := 0
			for i := 0; b.Loop(); i++ {
				// The oldest job ends, its user queues another, and the
				// freed slot takes the next job.
				done := running[i%slots]
				s.Release(done.User)
				b.StopTimer()
				var u int
				fmt.Sscanf(done.User, "user%05d", &u)
				push(u)
				b.StartTimer()
				it, ok := s.Next("p")
				if !ok {
					b.Fatal("no job")
				}
				running[i%slots] = it
				n++
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(n), "us/decision")
			b.ReportMetric(heapMB, "heap-MB")
		})
	}
}
