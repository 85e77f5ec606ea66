package broker

import "github.com/atelier-run/atelier/pkg/wire"

// Observer is told what the broker does, for metrics and the dashboard.
// Its methods run on the broker's core goroutine: they must be quick and
// must not call back into the broker.
type Observer interface {
	// JobChanged is called after a job's record changed in JOBS; prev is
	// its state before ("" for a job just taken in).
	JobChanged(prev wire.JobState, rec wire.JobRecord)
	// AgentSeen is called for every heartbeat.
	AgentSeen(hb wire.Heartbeat)
	// AgentLost is called when an agent stopped heartbeating.
	AgentLost(agent string)
}

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) JobChanged(wire.JobState, wire.JobRecord) {}
func (nopObserver) AgentSeen(wire.Heartbeat)                 {}
func (nopObserver) AgentLost(string)                         {}
