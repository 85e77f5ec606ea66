// Package scheduler decides which queued job a pool runs next.
//
// The dispatcher keeps one queue per user and asks the scheduler for the
// next job only when a slot frees up, so the order is decided at slot time,
// not at submit time. The scheduler is plain data and code — no NATS, no
// clock — so policies are tested and simulated at scale deterministically.
//
// Policies:
//   - round-robin (default): users with queued jobs take turns, one job per
//     turn; a participant who queued fifty variations cannot starve the
//     others, and a user who starts waiting is served within one round.
//   - fifo: jobs run in submission order across all users.
//   - priority: bumped jobs (the instructor's demo, explicit bumps) first,
//     in bump order; then round-robin.
//
// Within one user, jobs run bumped first, then by ComfyUI's priority (the
// client's number, lower first), then in submission order.
//
// A per-user cap on concurrently running jobs takes a user out of the
// choice while they are at the cap.
package scheduler
