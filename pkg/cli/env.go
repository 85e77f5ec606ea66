// Package cli holds the small helpers the thin mains share: flags that
// default to environment variables, and a context cancelled by signals.
package cli

import (
	"context"
	"flag"
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

// Int defines an int flag whose default comes from env.
func Int(fs *flag.FlagSet, name, env string, def int, usage string) *int {
	if v, err := strconv.Atoi(Env(env, "")); err == nil {
		def = v
	}
	return fs.Int(name, def, usage+" (env "+env+")")
}

// Duration defines a duration flag whose default comes from env.
func Duration(fs *flag.FlagSet, name, env string, def time.Duration, usage string) *time.Duration {
	if v, err := time.ParseDuration(Env(env, "")); err == nil {
		def = v
	}
	return fs.Duration(name, def, usage+" (env "+env+")")
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
