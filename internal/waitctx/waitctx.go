// Package waitctx is how a Stop(ctx) waits for its goroutines: until they
// end or ctx does, whichever comes first.
package waitctx

import "context"

// Wait runs wait (a sync.WaitGroup's Wait, a server's WaitForShutdown) and
// returns nil once it returns, or ctx's error if ctx ends first; wait then
// finishes in the background.
func Wait(ctx context.Context, wait func()) error {
	done := make(chan struct{})
	go func() {
		wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
