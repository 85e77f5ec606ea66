package filetransfer

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine outlives them: a
// receiver, server or sender left running is a bug.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
