package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// The proxy starts goroutines per view, watch and socket: every one of them
// must be gone once the tests' proxies have stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
