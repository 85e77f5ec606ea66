package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"
)

// envAnnotation is the pflag annotation naming a flag's environment
// variable; ApplyEnv reads it.
const envAnnotation = "atelier_env"

// String defines a string flag that env overrides when the command line
// does not set it.
func String(fs *pflag.FlagSet, name, env, def, usage string) *string {
	p := fs.String(name, def, withEnv(usage, env))
	annotate(fs, name, env)
	return p
}

// Int defines an int flag that env overrides.
func Int(fs *pflag.FlagSet, name, env string, def int, usage string) *int {
	p := fs.Int(name, def, withEnv(usage, env))
	annotate(fs, name, env)
	return p
}

// Int64 defines an int64 flag that env overrides.
func Int64(fs *pflag.FlagSet, name, env string, def int64, usage string) *int64 {
	p := fs.Int64(name, def, withEnv(usage, env))
	annotate(fs, name, env)
	return p
}

// Duration defines a duration flag ("30s", "5m") that env overrides.
func Duration(fs *pflag.FlagSet, name, env string, def time.Duration, usage string) *time.Duration {
	p := fs.Duration(name, def, withEnv(usage, env))
	annotate(fs, name, env)
	return p
}

// Bool defines a boolean flag that env overrides. On the command line it
// is --name or --name=false; in env any of strconv.ParseBool's spellings
// (1, true, 0, false, …).
func Bool(fs *pflag.FlagSet, name, env string, def bool, usage string) *bool {
	p := fs.Bool(name, def, withEnv(usage, env))
	annotate(fs, name, env)
	return p
}

// Size defines a byte-count flag ("500GiB", "2TB", "0") that env
// overrides.
func Size(fs *pflag.FlagSet, name, env string, def int64, usage string) *int64 {
	v := &sizeValue{n: def}
	fs.Var(v, name, withEnv(usage, env))
	annotate(fs, name, env)
	return &v.n
}

func withEnv(usage, env string) string {
	if env == "" {
		return usage
	}
	return usage + " (env " + env + ")"
}

func annotate(fs *pflag.FlagSet, name, env string) {
	if env == "" {
		return
	}
	if err := fs.SetAnnotation(name, envAnnotation, []string{env}); err != nil {
		panic(err) // the flag was defined just before
	}
}

// ApplyEnv sets every flag of fs that the command line left alone from its
// environment variable, if that is set. A value the flag cannot take is a
// usage error naming the variable: running with the default instead would
// run a server with a setting its operator did not choose. Execute calls
// it before every command runs.
func ApplyEnv(fs *pflag.FlagSet) error {
	var failed error
	fs.VisitAll(func(f *pflag.Flag) {
		names := f.Annotations[envAnnotation]
		if failed != nil || f.Changed || len(names) == 0 {
			return
		}
		v, ok := os.LookupEnv(names[0])
		if !ok {
			return
		}
		if err := f.Value.Set(v); err != nil {
			failed = UsageError(fmt.Errorf("invalid value %q for %s (--%s): %v", v, names[0], f.Name, err))
		}
	})
	return failed
}

// MustApplyEnv is ApplyEnv for a flag set parsed outside Execute: it exits
// with ExitUsage when a variable holds a value its flag cannot take.
func MustApplyEnv(fs *pflag.FlagSet) {
	if err := ApplyEnv(fs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(ExitUsage)
	}
}
