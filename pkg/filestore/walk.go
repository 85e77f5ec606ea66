package filestore

import (
	"context"
	"errors"
)

// ErrQuotaExceeded reports that a participant's files would exceed their
// disk quota. It lives here, beside the other file errors, so that the proxy,
// the broker's receiver and the agent can all recognise it (see
// pkg/retention for the check itself).
var ErrQuotaExceeded = errors.New("disk quota exceeded")

// Walker is implemented by stores that can enumerate their files, which
// retention and usage reports need. diskstore and s3store implement it.
type Walker interface {
	// Users lists the participants that have a folder in the store, sorted.
	Users(ctx context.Context) ([]string, error)
	// Walk calls fn for every regular file in user's kind folder,
	// subfolders included, in no particular order. Links, hidden files (the
	// store's temporary files among them) and names the store would refuse
	// are skipped, never followed. An error from fn stops the walk and is
	// returned.
	Walk(ctx context.Context, user string, kind Kind, fn func(Info) error) error
}
