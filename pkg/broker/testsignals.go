package broker

import (
	"github.com/atelier-run/atelier/internal/testsignal"
	"github.com/atelier-run/atelier/pkg/wire"
)

// testSignals tell the broker's tests what the core did, so that they
// wait for the event instead of polling JOBS or sleeping. A test Inits the
// ones it waits on before Start; the others cost a nil check.
type testSignals struct {
	// poolConsumerReady carries a pool whose DISPATCH consumer the broker
	// created (or found) and that now serves pulls. A consumer that
	// CONSUMER.INFO already shows may not answer pulls yet: the server
	// lists it before it subscribes its pull handler, and a fetch in
	// between gets "no responders".
	poolConsumerReady testsignal.Signal[string]
	// jobChanged carries a job's record after each write to JOBS.
	jobChanged testsignal.Signal[jobChange]
	// reportApplied carries each report once the core is done with it
	// (applied or ignored).
	reportApplied testsignal.Signal[wire.Report]
	// ticketReleased carries each ticket the broker published.
	ticketReleased testsignal.Signal[wire.Ticket]
	// housekept signals the end of a housekeeping tick (TickInterval),
	// ticketsChecked the end of a periodic check (TicketCheckInterval:
	// tickets, running caps, dispatch).
	housekept      testsignal.Signal[struct{}]
	ticketsChecked testsignal.Signal[struct{}]
}

// jobChange is one write of a job's record.
type jobChange struct {
	From wire.JobState
	Rec  wire.JobRecord
}

// Init turns on the signals of single events. The periodic ones
// (housekept, ticketsChecked) come many times a second in tests: a test
// that waits on them Inits them itself, so that no test fills their
// buffer unread.
func (ts *testSignals) Init() {
	ts.poolConsumerReady.Init()
	ts.jobChanged.Init()
	ts.reportApplied.Init()
	ts.ticketReleased.Init()
}
