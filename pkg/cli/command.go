package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// ExitUsage is the exit status of a usage error (an unknown subcommand or
// flag, a stray or missing argument, a bad environment value), as for
// Go's flag package and most Unix tools.
const ExitUsage = 2

// usageError marks an error as the caller's misuse of the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// UsageError marks err as a usage error: Execute prints it with a pointer
// to the command's help and exits with ExitUsage.
func UsageError(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// Usagef is UsageError(fmt.Errorf(format, a...)).
func Usagef(format string, a ...any) error { return UsageError(fmt.Errorf(format, a...)) }

// IsUsageError reports whether err is (or wraps) a usage error.
func IsUsageError(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

// NoArgs refuses any positional argument.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			return Usagef("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return Usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// ExactArgs wants exactly n positional arguments.
func ExactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return Usagef("%s wants %d argument(s), got %d: usage: %s", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}

// MinimumArgs wants at least n positional arguments.
func MinimumArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return Usagef("%s wants at least %d argument(s), got %d: usage: %s", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}

// RangeArgs wants between min and max positional arguments.
func RangeArgs(min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || len(args) > max {
			return Usagef("%s wants %d to %d argument(s), got %d: usage: %s", cmd.CommandPath(), min, max, len(args), cmd.UseLine())
		}
		return nil
	}
}

// Execute runs root with os.Args in a context that SIGINT and SIGTERM
// cancel, and returns the process's exit status: 0, ExitUsage for a usage
// error, 1 for any other error. Errors are printed as "<binary>: <error>".
//
// It makes the command tree strict before running it: a command without
// an Args check takes no positional argument, a command that only groups
// subcommands refuses to run without one (cobra would print its help and
// exit 0, or accept any word as an argument), flag errors are usage
// errors, and every flag's environment variable is applied (ApplyEnv).
func Execute(root *cobra.Command) int {
	ctx, cancel := SignalContext()
	defer cancel()
	return ExecuteArgs(ctx, root, os.Args[1:], os.Stderr)
}

// ExecuteArgs is Execute with the arguments, context and error output
// given (tests).
func ExecuteArgs(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	strict(root)
	root.SilenceErrors, root.SilenceUsage = true, true
	root.SetArgs(args)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	if IsUsageError(err) {
		fmt.Fprintf(stderr, "Run '%s -h' for usage.\n", cmd.CommandPath())
		return ExitUsage
	}
	return 1
}

// strict applies Execute's rules to cmd and its subcommands.
func strict(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return UsageError(err) })
	if cmd.Args == nil {
		cmd.Args = NoArgs
	}
	if !cmd.Runnable() && cmd.HasSubCommands() {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			return Usagef("%s wants a subcommand", c.CommandPath())
		}
	}
	pre := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := ApplyEnv(c.Flags()); err != nil {
			return err
		}
		if pre != nil {
			return pre(c, args)
		}
		return nil
	}
	for _, sub := range cmd.Commands() {
		strict(sub)
	}
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
