// Package backoff is the one retry pause of the project: exponential,
// with jitter, capped, and ended at once by the context, so a supervisor
// or a retry loop never sleeps through a stop.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Defaults of Policy's zero fields.
const (
	DefaultMin    = 100 * time.Millisecond
	DefaultMax    = 30 * time.Second
	DefaultFactor = 2.0
)

// Policy describes the pauses: Min, then Factor times longer each time,
// never longer than Max. Jitter (0 to 1) takes up to that fraction off
// each pause at random, so many clients retrying at once spread out.
type Policy struct {
	Min, Max time.Duration
	Factor   float64
	Jitter   float64
}

func (p Policy) withDefaults() Policy {
	if p.Min <= 0 {
		p.Min = DefaultMin
	}
	if p.Max <= 0 {
		p.Max = DefaultMax
	}
	if p.Max < p.Min {
		p.Max = p.Min
	}
	if p.Factor < 1 {
		p.Factor = DefaultFactor
	}
	p.Jitter = min(max(p.Jitter, 0), 1)
	return p
}

// Backoff is one sequence of pauses. Not safe for concurrent use.
type Backoff struct {
	p    Policy
	next time.Duration
}

// New starts a sequence at p.Min.
func New(p Policy) *Backoff {
	p = p.withDefaults()
	return &Backoff{p: p, next: p.Min}
}

// Next returns the next pause and lengthens the one after.
func (b *Backoff) Next() time.Duration {
	d := b.next
	b.next = min(time.Duration(float64(b.next)*b.p.Factor), b.p.Max)
	if b.p.Jitter > 0 {
		d -= time.Duration(rand.Float64() * b.p.Jitter * float64(d))
	}
	return d
}

// Reset starts the sequence again at Min (after a success, say).
func (b *Backoff) Reset() { b.next = b.p.Min }

// Wait pauses for Next(); it returns false at once when ctx ends.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep pauses for d; it returns false at once when ctx ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Retry calls fn until it succeeds, returns a permanent error
// (Permanent), has been called attempts times (0: no limit), or ctx ends,
// pausing by p between calls. It returns fn's last error, or ctx's.
func Retry(ctx context.Context, p Policy, attempts int, fn func(ctx context.Context) error) error {
	b := New(p)
	for i := 1; ; i++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		var perm permanent
		if asPermanent(err, &perm) {
			return perm.err
		}
		if attempts > 0 && i >= attempts {
			return err
		}
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}
