package agent

// What the external tests (package agent_test) use of the agent's
// internals: its test signals.

type (
	TestSignals   = testSignals
	AttemptSignal = attemptSignal
	AttemptStep   = attemptStep
	FetchSignal   = fetchSignal
)

const (
	StepClaimed   = stepClaimed
	StepStarted   = stepStarted
	StepExecuting = stepExecuting
	StepShipped   = stepShipped
	StepReported  = stepReported
	StepReleased  = stepReleased
	StepEnded     = stepEnded
)

// SignalsOf returns a's test signals, for a test to Init before Start.
func SignalsOf(a *Agent) *TestSignals { return &a.signals }
