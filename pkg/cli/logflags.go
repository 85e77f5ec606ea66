package cli

import (
	"os"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/atelier-run/atelier/pkg/logging"
)

// LogFlags defines --log-format (ATELIER_LOG_FORMAT, default format) and
// --log-level (ATELIER_LOG_LEVEL, logging.DefaultLevel) and returns a
// function that builds the logger of component on stderr once the flags
// are parsed; a format or level it does not know is a usage error.
func LogFlags(fs *pflag.FlagSet, component, format string) func() (zerolog.Logger, error) {
	f := String(fs, "log-format", "ATELIER_LOG_FORMAT", format, "json or console")
	l := String(fs, "log-level", "ATELIER_LOG_LEVEL", logging.DefaultLevel, "debug, info, warn, error")
	return func() (zerolog.Logger, error) {
		log, err := logging.New(os.Stderr, *f, *l, component)
		return log, UsageError(err)
	}
}
