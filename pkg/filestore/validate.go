package filestore

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/atelier-run/atelier/pkg/datalayout"
)

// Limits on names. 255 bytes is the usual file name limit of Linux file
// systems; the subfolder limits keep paths far below PATH_MAX and bound the
// work of walking them.
const (
	MaxNameLen      = 255
	MaxSubfolderLen = 1024
	MaxSubfolderDep = 16
)

// ValidateName reports whether name can be a file name in the store: a single
// path component of 1–255 bytes of valid UTF-8 with no '/', '\\', NUL or
// other control characters, and not starting with '.' (which excludes "." and
// "..", and keeps hidden files, the store's own temporary files among them,
// out of reach). The name is used as is: decoding URL escapes is the caller's
// job, and a name that needs cleaning is refused rather than rewritten.
func ValidateName(name string) error {
	if err := validComponent(name); err != nil {
		return fmt.Errorf("%w: file name %q: %s", ErrInvalidName, name, err)
	}
	return nil
}

// CleanSubfolder validates a subfolder and returns it in canonical form. ""
// is the kind's folder itself. A subfolder is one or more components joined
// by '/', each following the rules of ValidateName (so no "", "." or ".."
// segments and no leading '/'); one trailing '/' is tolerated and removed
// because ComfyUI clients send "video/" as often as "video".
func CleanSubfolder(subfolder string) (string, error) {
	if subfolder == "" {
		return "", nil
	}
	s := strings.TrimSuffix(subfolder, "/")
	if len(s) > MaxSubfolderLen {
		return "", fmt.Errorf("%w: subfolder longer than %d bytes", ErrInvalidName, MaxSubfolderLen)
	}
	parts := strings.Split(s, "/")
	if len(parts) > MaxSubfolderDep {
		return "", fmt.Errorf("%w: subfolder deeper than %d", ErrInvalidName, MaxSubfolderDep)
	}
	for _, p := range parts {
		if err := validComponent(p); err != nil {
			return "", fmt.Errorf("%w: subfolder %q: %s", ErrInvalidName, subfolder, err)
		}
	}
	return s, nil
}

// Validate checks every field of r and returns r with its subfolder in
// canonical form.
func (r Ref) Validate() (Ref, error) {
	if err := datalayout.ValidUserID(r.User); err != nil {
		return Ref{}, fmt.Errorf("%w: %w", ErrInvalidName, err)
	}
	if err := r.Kind.Validate(); err != nil {
		return Ref{}, err
	}
	sub, err := CleanSubfolder(r.Subfolder)
	if err != nil {
		return Ref{}, err
	}
	if err := ValidateName(r.Name); err != nil {
		return Ref{}, err
	}
	r.Subfolder = sub
	return r, nil
}

func validComponent(s string) error {
	switch {
	case s == "":
		return errString("empty")
	case len(s) > MaxNameLen:
		return errString("longer than 255 bytes")
	case s[0] == '.':
		return errString("starts with '.'")
	case !utf8.ValidString(s):
		return errString("not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case r == '/' || r == '\\':
			return errString("contains a path separator")
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			// NUL and other control characters end up in logs and in
			// Content-Disposition headers; nobody names an image with them.
			return errString("contains a control character")
		case r == utf8.RuneError:
			return errString("not valid UTF-8")
		}
	}
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }
