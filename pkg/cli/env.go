// Package cli holds the small helpers the thin mains share: flags that
// default to environment variables, and a context cancelled by signals.
package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// Env returns the environment variable's value or def.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// String defines a string flag whose default comes from env.
func String(fs *flag.FlagSet, name, env, def, usage string) *string {
	return fs.String(name, Env(env, def), usage+" (env "+env+")")
}

// Int defines an int flag whose default comes from env. A value in env
// that is not an int is refused like a bad flag value (see badEnv).
func Int(fs *flag.FlagSet, name, env string, def int, usage string) *int {
	if s := Env(env, ""); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			badEnv(fs, env, s, err)
		}
		def = v
	}
	return fs.Int(name, def, usage+" (env "+env+")")
}

// Duration defines a duration flag whose default comes from env. A value
// in env that is not a duration ("30s", "5m") is refused like a bad flag
// value (see badEnv).
func Duration(fs *flag.FlagSet, name, env string, def time.Duration, usage string) *time.Duration {
	if s := Env(env, ""); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			badEnv(fs, env, s, err)
		}
		def = v
	}
	return fs.Duration(name, def, usage+" (env "+env+")")
}

// badEnv refuses an environment variable the flag cannot take: silently
// falling back to the default would run a server with a setting its
// operator did not choose. Like a bad flag under flag.ExitOnError, the
// process exits with status 2; other flag sets (tests) panic.
func badEnv(fs *flag.FlagSet, env, value string, err error) {
	msg := fmt.Sprintf("invalid value %q for %s: %v", value, env, err)
	fmt.Fprintln(fs.Output(), msg)
	if fs.ErrorHandling() == flag.ExitOnError {
		os.Exit(2)
	}
	panic(msg)
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
