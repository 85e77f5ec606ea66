package filestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// MaxRenameAttempts bounds UniqueName's search for a free "stem (n).ext".
const MaxRenameAttempts = 10000

// UniqueName applies ComfyUI's upload rule (without overwrite) to ref: if no
// file has ref's name, the name is free; if one has it with the same content
// (sha256), it is reused; otherwise "stem (1).ext", "stem (2).ext", … are tried
// the same way. It returns the name to use and whether a file with that name
// and content already exists (in which case there is nothing to write).
//
// The check and a later Create are not atomic: Commit without Overwrite fails
// with ErrExists if another writer took the name meanwhile, and the caller
// calls UniqueName again.
func UniqueName(ctx context.Context, s Store, ref Ref, sha256Hex string) (name string, exists bool, err error) {
	ref, err = ref.Validate()
	if err != nil {
		return "", false, err
	}
	ext := path.Ext(ref.Name)
	stem := strings.TrimSuffix(ref.Name, ext)
	candidate := ref
	for i := 0; i <= MaxRenameAttempts; i++ {
		if i > 0 {
			candidate.Name = stem + " (" + strconv.Itoa(i) + ")" + ext
			if ValidateName(candidate.Name) != nil {
				return "", false, fmt.Errorf("filestore: unique name for %s: %w: too long", ref, ErrInvalidName)
			}
		}
		info, err := s.Stat(ctx, candidate)
		if errors.Is(err, ErrNotFound) {
			return candidate.Name, false, nil
		}
		if err != nil {
			// An unreadable entry (a symlink, a directory) is skipped like an
			// existing file with other content.
			if errors.Is(err, ErrInvalidName) {
				continue
			}
			return "", false, err
		}
		if sha256Hex == "" {
			continue
		}
		sum := info.SHA256
		if sum == "" {
			if sum, err = SHA256Of(ctx, s, candidate); err != nil {
				if errors.Is(err, ErrNotFound) {
					return candidate.Name, false, nil
				}
				return "", false, err
			}
		}
		if strings.EqualFold(sum, sha256Hex) {
			return candidate.Name, true, nil
		}
	}
	return "", false, fmt.Errorf("filestore: unique name for %s: %w: more than %d variants exist", ref, ErrExists, MaxRenameAttempts)
}

// SHA256Of returns the content's sha256, from the store's Info when it knows
// it and by reading the file otherwise.
func SHA256Of(ctx context.Context, s Store, ref Ref) (string, error) {
	f, err := s.Open(ctx, ref)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if sum := f.Info().SHA256; sum != "" {
		return sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", fmt.Errorf("filestore: hash %s: %w", ref, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
