package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/atelier-run/atelier/internal/testutil"
)

// runBinary runs one of the built binaries in dir with args and returns
// its exit status and output.
func runBinary(t *testing.T, dir, bin string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), args...)
	cmd.Dir, cmd.Env = dir, cleanEnv()
	out, err := cmd.CombinedOutput()
	require.NoError(t, ctx.Err(), "%s %q did not exit (it started?): %s", bin, args, out)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	require.NoError(t, err)
	return 0, string(out)
}

// A misspelt subcommand, a flag the subcommand does not take and a stray
// argument are usage errors (exit status 2) that say what is wrong, and
// start nothing: no data directory appears where a broker would have made
// one.
func TestStrictCommandLines(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		bin  string
		args []string
		want string
	}{
		{"atelier-broker", []string{"hlep"}, `unknown command "hlep" for "atelier-broker"`},
		{"atelier-broker", []string{"serve", "now"}, `atelier-broker serve takes no arguments, got ["now"]`},
		{"atelier-broker", []string{"user", "list", "--role", "x"}, "unknown flag: --role"},
		{"atelier-broker", []string{"user", "add", "stray"}, `atelier-broker user add takes no arguments, got ["stray"]`},
		{"atelier-broker", []string{"user"}, "atelier-broker user wants a subcommand"},
		{"atelier-broker", []string{"bump", "user002"}, "atelier-broker bump wants 2 argument(s), got 1"},
		{"atelier-broker", []string{"--ticket-check-interval", "soon"}, `invalid argument "soon" for "--ticket-check-interval"`},
		{"atelier-proxy", []string{"extra-arg"}, `atelier-proxy takes no arguments, got ["extra-arg"]`},
		{"atelier-proxy", []string{"help"}, `atelier-proxy takes no arguments, got ["help"]`},
		{"atelier-devstack", []string{"go"}, `atelier-devstack takes no arguments, got ["go"]`},
	} {
		dir := t.TempDir()
		code, out := runBinary(t, dir, c.bin, c.args...)
		require.Equal(t, 2, code, "%s %q: %s", c.bin, c.args, out)
		require.Contains(t, out, c.want, "%s %q", c.bin, c.args)
		require.Contains(t, out, "-h' for usage", "%s %q", c.bin, c.args)
		_, err := os.Stat(filepath.Join(dir, "data"))
		require.ErrorIs(t, err, os.ErrNotExist, "%s %q made a data directory: it started", c.bin, c.args)
	}

	// The simulator's optional-value flag takes its value after '=' only.
	sim := comfysimBin(t)
	cmd := exec.Command(sim, "--enable-cors-header", "http://x")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, string(out))
	require.Equal(t, 2, exit.ExitCode(), string(out))
	require.Contains(t, string(out), `unexpected argument "http://x" (use --flag=value for flags with optional values)`)
}

// -h on atelier-broker lists its subcommands; each subcommand's help shows
// its own flags only.
func TestBrokerHelp(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	code, out := runBinary(t, dir, "atelier-broker", "-h")
	require.Equal(t, 0, code, out)
	for _, sub := range []string{"serve", "user", "status", "pause", "resume", "policy", "bump", "cancel", "drain", "undrain", "queues", "completion"} {
		require.Regexp(t, `(?m)^\s+`+sub+`\s`, out, "atelier-broker -h lists %s", sub)
	}
	require.Contains(t, out, "--ticket-check-interval", "the broker's own flags, for atelier-broker without a subcommand")

	code, out = runBinary(t, dir, "atelier-broker", "user", "-h")
	require.Equal(t, 0, code, out)
	for _, sub := range []string{"add", "list", "passwd"} {
		require.Regexp(t, `(?m)^\s+`+sub+`\s`, out)
	}

	code, out = runBinary(t, dir, "atelier-broker", "user", "list", "-h")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "--data")
	for _, other := range []string{"--role", "--id", "--password", "--pool"} {
		require.NotContains(t, out, other, "user list -h shows only its own flags")
	}
	code, out = runBinary(t, dir, "atelier-broker", "user", "add", "-h")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "--role")

	code, out = runBinary(t, dir, "atelier-broker", "completion", "bash")
	require.Equal(t, 0, code, out)
	require.True(t, strings.Contains(out, "atelier-broker"), "a bash completion script")
	_, err := os.Stat(filepath.Join(dir, "data"))
	require.ErrorIs(t, err, os.ErrNotExist, "help started nothing")
}
