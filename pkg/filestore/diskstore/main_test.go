package diskstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The package's tests leave no goroutine running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
