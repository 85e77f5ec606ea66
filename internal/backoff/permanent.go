package backoff

import "errors"

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying: Retry returns it (unwrapped)
// at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

func asPermanent(err error, p *permanent) bool { return errors.As(err, p) }
