//go:build !linux

package diskstore

import (
	"errors"
	"os"
)

func renameInto(string, *os.Root, string) error {
	return errors.New("renameat not available")
}

func renameOut(*os.Root, string, string) error {
	return errors.New("renameat not available")
}
