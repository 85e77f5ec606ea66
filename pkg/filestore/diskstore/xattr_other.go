//go:build !linux

package diskstore

import (
	"errors"
	"os"
)

var errNoXattr = errors.New("extended attributes not supported")

func fsetxattr(*os.File, string, []byte) error        { return errNoXattr }
func fgetxattr(*os.File, string, []byte) (int, error) { return 0, errNoXattr }
