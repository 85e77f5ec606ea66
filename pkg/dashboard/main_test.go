package dashboard

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test stops what it starts: the dashboard's watchers, the embedded
// NATS server, the HTTP servers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
