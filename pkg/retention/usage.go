package retention

import (
	"context"
	"errors"
	"fmt"

	"github.com/atelier-run/atelier/pkg/filestore"
)

// Kinds are the folders retention and quotas look at.
var Kinds = []filestore.Kind{filestore.KindInput, filestore.KindOutput, filestore.KindTemp}

// KindUsage is what one folder of one participant holds.
type KindUsage struct {
	Bytes int64 `json:"bytes"`
	Files int   `json:"files"`
}

// UserUsage is one participant's usage per kind and in total.
type UserUsage struct {
	User   string                       `json:"user"`
	Kinds  map[filestore.Kind]KindUsage `json:"kinds"`
	Total  int64                        `json:"total_bytes"`
	Files  int                          `json:"files"`
	Limit  int64                        `json:"limit_bytes,omitempty"`
	Over   bool                         `json:"over_quota,omitempty"`
	Errors []string                     `json:"errors,omitempty"`
}

// Report is the usage of every participant, sorted by user id.
type Report struct {
	Users []UserUsage `json:"users"`
	Total int64       `json:"total_bytes"`
}

// walker returns st as a Walker or an error saying it cannot be walked.
func walker(st filestore.Store) (filestore.Walker, error) {
	w, ok := st.(filestore.Walker)
	if !ok {
		return nil, fmt.Errorf("retention: store %T cannot list its files (no filestore.Walker)", st)
	}
	return w, nil
}

// Usage returns the bytes and files of every participant per kind. It reads
// directory entries only, never file contents.
func Usage(ctx context.Context, st filestore.Store) (Report, error) {
	w, err := walker(st)
	if err != nil {
		return Report{}, err
	}
	users, err := w.Users(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("retention: usage: %w", err)
	}
	var rep Report
	for _, u := range users {
		uu, err := userUsage(ctx, w, u)
		if err != nil && ctx.Err() != nil {
			return Report{}, ctx.Err()
		}
		rep.Users = append(rep.Users, uu)
		rep.Total += uu.Total
	}
	return rep, nil
}

// UsageOf returns one participant's usage.
func UsageOf(ctx context.Context, st filestore.Store, user string) (UserUsage, error) {
	w, err := walker(st)
	if err != nil {
		return UserUsage{}, err
	}
	return userUsage(ctx, w, user)
}

func userUsage(ctx context.Context, w filestore.Walker, user string) (UserUsage, error) {
	uu := UserUsage{User: user, Kinds: map[filestore.Kind]KindUsage{}}
	var errs []error
	for _, k := range Kinds {
		var ku KindUsage
		err := w.Walk(ctx, user, k, func(i filestore.Info) error {
			ku.Bytes += i.Size
			ku.Files++
			return nil
		})
		if err != nil {
			// One unreadable folder should not hide the others.
			errs = append(errs, err)
			uu.Errors = append(uu.Errors, err.Error())
		}
		uu.Kinds[k] = ku
		uu.Total += ku.Bytes
		uu.Files += ku.Files
	}
	return uu, errors.Join(errs...)
}
