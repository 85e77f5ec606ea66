// Package logging builds the zerolog logger every binary uses: JSON lines in
// production, a readable console format for `make run`.
package logging

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// Defaults of the binaries' --log-format and --log-level.
const (
	DefaultFormat = "json"
	DefaultLevel  = "info"
)

// New returns a logger writing to w in format "json" or "console" at the
// given level ("debug", "info", "warn", "error").
func New(w io.Writer, format, level, component string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	default:
		return zerolog.Logger{}, fmt.Errorf("log format %q: want json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("service", component).Logger(), nil
}

// Must is New on stderr that exits on a bad setting (for mains).
func Must(format, level, component string) zerolog.Logger {
	l, err := New(os.Stderr, format, level, component)
	if err != nil {
		fmt.Fprintln(os.Stderr, component+":", err)
		os.Exit(2)
	}
	return l
}
