package proxy

import (
	"time"

	"github.com/atelier-run/atelier/internal/testsignal"
)

// testSignals are the points of the proxy's work its tests wait for
// instead of polling (internal/testsignal). A test turns on the ones it
// reads and hands them to New in Config.testSignals; off, each costs a
// nil check.
type testSignals struct {
	// catalogApplied: the catalog watch applied a change to a pool's
	// catalog (its initial values included).
	catalogApplied testsignal.Signal[catalogChange]
	// janitorPassed: a pass of the view janitor ended.
	janitorPassed testsignal.Signal[janitorPass]
	// viewAwaited: a request began waiting for the user's view.
	viewAwaited testsignal.Signal[string]
	// socketRemoved: a socket (its client id) left its view.
	socketRemoved testsignal.Signal[string]
}

// catalogChange is a pool's catalog put or deleted.
type catalogChange struct {
	pool    string
	deleted bool
}

// janitorPass is one pass of viewRegistry.janitor: when it looked, and
// the users whose views it evicted.
type janitorPass struct {
	at      time.Time
	evicted []string
}
