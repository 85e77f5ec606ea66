package broker

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test stops what it starts: the broker's core and consumers, the
// embedded NATS servers, the HTTP servers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
